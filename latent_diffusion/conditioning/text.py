"""Text through cross-attention: tokenizer + text encoder -> the UNet's context [B, L, D].

The encoder is either pretrained (a local transformers folder: CLIP text or BERT-style, frozen or
trained with the UNet) or the paper's jointly trained transformer (a BERT tokenizer and a BERT-style
encoder initialised at random). The null condition of classifier-free guidance is the encoding of
the empty prompt (the Stable Diffusion convention), so a trained model's unconditional branch is
exactly what diffusers computes for `negative_prompt=""`.

Where training reads text from (`source`):
  caption  captions tokenized on the host, encoder run inside the train step;
  tokens   token ids stored with the latents by latent_diffusion.cli.encode (same tokenizer, same length);
  context  encoder outputs stored with the latents (frozen encoders only): the step runs no encoder.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.conditioning.base import Conditioner
from latent_diffusion.data.images import SkipCounter
from latent_diffusion.models.text import BertEncoder, CLIPTextTransformer
from latent_diffusion.parallel import box_like
from latent_diffusion.weights import tokenization

SOURCES = ("caption", "tokens", "context")
MISSING_CAPTION = ("empty", "skip")
# layer name -> how many final layers are skipped (the penultimate layer: SD 2.x / "clip skip 1").
LAYERS = {"last": 0, "penultimate": 1}

TextEncoder = CLIPTextTransformer | BertEncoder


class TextConditioner(Conditioner):
  """Inputs {'tokens': int32 [B, L], 'token_mask'?: int32 [B, L]} or {'context': float32 [B, L, D]};
  UNet kwargs {'context': [B, L, D]}; null = encoder(''), broadcast over the batch.

  encoder_params: the pretrained encoder's float32 params (None: initialised at random and trained).
  use_attention_mask: pass the tokenizer's padding mask to the encoder (diffusers does when the
    encoder's config says use_attention_mask; Stable Diffusion's CLIP does not).
  """
  name = "text"

  def __init__(self, tokenizer, encoder: TextEncoder, encoder_params: Any | None = None, *, train_encoder: bool,
               max_length: int | None = None, layer: str = "last", use_attention_mask: bool = False,
               source: str = "caption", missing_caption: str = "empty", skips: SkipCounter | None = None):
    if layer not in LAYERS:
      raise ValueError(f"Unknown text layer {layer!r} (config.ldm.conditioning.text.layer); known: {sorted(LAYERS)}.")
    if source not in SOURCES:
      raise ValueError(f"Unknown text source {source!r} (config.ldm.conditioning.text.source); known: {SOURCES}.")
    if missing_caption not in MISSING_CAPTION:
      raise ValueError(f"Unknown missing_caption {missing_caption!r}; known: {MISSING_CAPTION}.")
    if encoder_params is None and not train_encoder:
      raise ValueError("A text encoder without pretrained weights must be trained (text.train_encoder=True).")
    if source == "context" and train_encoder:
      raise ValueError("text.source='context' reads precomputed encoder outputs, which a trained encoder would "
                       "change: use source='caption' or 'tokens' with train_encoder=True.")
    self.tokenizer, self.encoder, self.encoder_params = tokenizer, encoder, encoder_params
    self.train_encoder, self.layer, self.use_attention_mask = train_encoder, layer, use_attention_mask
    self.source, self.missing_caption = source, missing_caption
    self.max_length = tokenizer.model_max_length if max_length is None else int(max_length)
    if self.max_length > encoder.max_position_embeddings:
      raise ValueError(f"Text max_length {self.max_length} exceeds the encoder's max_position_embeddings="
                       f"{encoder.max_position_embeddings}.")
    if len(tokenizer) > encoder.vocab_size:
      raise ValueError(f"The tokenizer has {len(tokenizer)} tokens, the text encoder's vocabulary only "
                       f"{encoder.vocab_size}: they do not belong together.")
    self.skips = SkipCounter("text") if skips is None else skips
    self._null_tokens = self.empty_tokens()
    self._null_context = None

  # --- host side -------------------------------------------------------------------------------
  @property
  def width(self) -> int:
    return self.encoder.hidden_size

  def tokenize(self, texts: list[str]) -> dict:
    """{'tokens': int32 [B, L], 'token_mask'?: int32 [B, L]} as the model inputs hold them."""
    ids, mask = tokenization.tokenize(self.tokenizer, list(texts), self.max_length, with_attention_mask=True)
    return {"tokens": ids, **({"token_mask": mask} if self.use_attention_mask else {})}

  def empty_tokens(self) -> dict:
    """Model inputs [1, L] of the empty condition, whose encoding is the null of classifier-free guidance."""
    return self.tokenize([""])

  def unet_fields(self) -> dict:
    return {"context_dim": self.width}

  def input_fields(self) -> tuple[str, ...]:
    if self.source == "context":
      return ("context",)
    return ("tokens",) + (("token_mask",) if self.use_attention_mask else ())

  def prepare(self, example: dict) -> dict | None:
    """A record without a caption (None or no field) is counted and trained as the empty prompt, or dropped
    (missing_caption='skip'); stored tokens / contexts of such records are those of '' (latent_diffusion.cli.encode)."""
    key = example.get("key", "")
    caption = example.get("caption")
    if caption is None:
      self.skips.skip("missing_caption", key)
      if self.missing_caption == "skip":
        return None
      caption = ""
    if self.source == "caption":
      return {name: value[0] for name, value in self.tokenize([caption]).items()}
    missing = [name for name in self.input_fields() if name not in example]
    if missing:
      raise ValueError(f"Record {key!r} lacks {missing}: config.ldm.conditioning.text.source={self.source!r} "
                       f"reads them from latent records written by latent_diffusion.cli.encode with "
                       f"--config.encode.text={'context' if self.source == 'context' else 'tokens'}.")
    inputs = {name: np.asarray(example[name]) for name in self.input_fields()}
    length = inputs[self.input_fields()[0]].shape[0]
    if length != self.max_length:
      raise ValueError(f"Record {key!r} holds {self.source} of length {length}; the text conditioner uses "
                       f"max_length={self.max_length} (config.ldm.conditioning.text.max_length).")
    return inputs

  def request_inputs(self, request: dict, num: int) -> dict:
    prompts = request.get("prompt")
    if prompts is None:
      raise ValueError("A text-conditional model needs prompts to sample (request field 'prompt').")
    return self.tokenize(_broadcast("prompt", prompts, num))

  def null_request_inputs(self, request: dict, num: int) -> dict:
    return self.tokenize(_broadcast("negative_prompt", request.get("negative_prompt") or "", num))

  def example_inputs(self, batch_size: int, latent_shape) -> dict:
    if self.source == "context":
      return {"context": np.zeros((batch_size, self.max_length, self.width), np.float32)}
    return {name: np.repeat(value, batch_size, axis=0) for name, value in self._null_tokens.items()}

  def encode_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Frozen encoder outputs float32 [N, L, D] of `texts` (for storing with latents: source='context')."""
    if self.encoder_params is None:
      raise ValueError("Only a pretrained (frozen) text encoder can precompute its outputs.")
    encode = jax.jit(lambda p, inputs: self.unet_kwargs({"encoder": p}, inputs)["context"])
    out = []
    for start in range(0, len(texts), batch_size):
      chunk = list(texts[start:start + batch_size])
      inputs = self.tokenize(chunk + [""] * (batch_size - len(chunk)))       # fixed shape: one compile
      out.append(np.asarray(encode(self.encoder_params, inputs))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.max_length, self.width), np.float32)

  # --- parameters ------------------------------------------------------------------------------
  def _abstract_encoder(self):
    ids = jnp.zeros((1, self.max_length), jnp.int32)
    return jax.eval_shape(self.encoder.init, jax.random.key(0), ids)["params"]

  def _boxed_pretrained(self):
    return box_like(self._abstract_encoder(), self.encoder_params)

  def init_params(self, rng) -> dict:
    if not self.train_encoder:
      return {}
    if self.encoder_params is not None:
      return {"encoder": self._boxed_pretrained()}
    return {"encoder": self.encoder.init(rng, jnp.asarray(self._null_tokens["tokens"]))["params"]}

  def frozen_params(self) -> dict:
    if self.train_encoder:
      return {}
    if self.source == "context":       # the step needs only the empty prompt's encoding
      null = nn.Partitioned(jnp.asarray(self.null_context()), names=(None, "embed"))
      return {"null_context": null}
    return {"encoder": self._boxed_pretrained()}

  def abstract_params(self) -> dict:
    if self.source == "context" and not self.train_encoder:
      null = jax.ShapeDtypeStruct((self.max_length, self.width), jnp.float32)
      return {"null_context": nn.Partitioned(null, names=(None, "embed"))}
    return {"encoder": self._abstract_encoder()}

  def null_context(self) -> np.ndarray:
    """The frozen encoder's output for '' [L, D] (computed once)."""
    if self._null_context is None:
      self._null_context = self.encode_texts([""], batch_size=1)[0]
    return self._null_context

  # --- device side -----------------------------------------------------------------------------
  def unet_kwargs(self, params, inputs: dict) -> dict:
    if "context" in inputs:
      return {"context": inputs["context"]}
    encoding = self.encoder.apply({"params": params["encoder"]}, inputs["tokens"], inputs.get("token_mask"),
                                  skip_last_layers=LAYERS[self.layer])
    return {"context": encoding.hidden_states}

  def null_unet_kwargs(self, params, inputs: dict) -> dict:
    batch = jax.tree.leaves(inputs)[0].shape[0]
    if "null_context" in params:
      null = params["null_context"][None]
    else:
      null = self.unet_kwargs(params, jax.tree.map(jnp.asarray, self._null_tokens))["context"]   # [1, L, D]
    return {"context": jnp.broadcast_to(null, (batch,) + null.shape[1:])}


def _broadcast(name: str, texts, num: int) -> list[str]:
  """One string for every row, or exactly `num` strings (a lone string is never split into characters)."""
  if isinstance(texts, str):
    return [texts] * num
  texts = list(texts)
  if len(texts) == 1:
    return texts * num
  if len(texts) != num or not all(isinstance(t, str) for t in texts):
    raise ValueError(f"Sampling request field {name!r}: {len(texts)} values for {num} images; give one string "
                     f"(used for every image) or one per image.")
  return texts

