"""CLIP score (Hessel et al. 2021, as torchmetrics computes it): 100 * max(cos(image embedding, prompt
embedding), 0), averaged over samples, with a CLIPModel read from a local transformers folder.

Class-conditional sources are scored against config.evaluate.clip.prompt formatted with the class name.
Images are preprocessed as CLIPImageProcessor does, in float: shortest side resized to the model's input with
PIL-style bicubic (antialiased), centre crop, CLIP's mean / std (from preprocessor_config.json if present).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.evaluation import resizing
from latent_diffusion.evaluation.networks import Network, sharded_outputs
from latent_diffusion.weights import tokenization
from latent_diffusion.weights.clip import CLIPModelWeights, load_clip_model

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(images: jax.Array, size: int, mean, std) -> jax.Array:
  """images [B, H, W, 1 or 3] in [0, 1] -> CLIP pixel values [B, size, size, 3]."""
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  h, w = images.shape[1:3]
  scale = size / min(h, w)
  resized_h, resized_w = max(size, round(h * scale)), max(size, round(w * scale))
  if (resized_h, resized_w) != (h, w):
    images = resizing.resize(images, (resized_h, resized_w), "pil_bicubic")
  top, left = (resized_h - size) // 2, (resized_w - size) // 2
  images = jnp.clip(images[:, top:top + size, left:left + size], 0.0, 1.0)
  return (images - jnp.asarray(mean)) / jnp.asarray(std)


def image_embeddings(weights: CLIPModelWeights, vision_params, pixel_values: jax.Array) -> jax.Array:
  """L2-normalised projected image embeddings [B, P]."""
  pooled = weights.vision.apply({"params": vision_params}, pixel_values)
  embeds = pooled @ weights.visual_projection
  return embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True)


def text_embeddings(weights: CLIPModelWeights, token_ids: np.ndarray) -> np.ndarray:
  """L2-normalised projected text embeddings [B, P] of token ids [B, L]."""
  pooled = weights.text.apply({"params": weights.text_params}, jnp.asarray(token_ids)).pooled
  embeds = np.asarray(pooled) @ weights.text_projection
  return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)


def clip_scores(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
  """[B] 100 * max(cos, 0) of matching rows of normalised embeddings."""
  return 100.0 * np.maximum((np.asarray(image_embeds, np.float64) * text_embeds).sum(axis=-1), 0.0)


def _normalization(folder: pathlib.Path) -> tuple:
  path = folder / "preprocessor_config.json"
  preprocessor = json.loads(path.read_text()) if path.is_file() else {}   # transformers' file: its keys are optional
  return tuple(preprocessor.get("image_mean", OPENAI_CLIP_MEAN)), tuple(preprocessor.get("image_std", OPENAI_CLIP_STD))


def clip_network(ctx) -> Network:
  """Network 'clip': output 'score' [B] against each sample's class prompt."""
  cfg = ctx.config.evaluate.clip
  if not cfg.folder:
    raise FileNotFoundError("config.evaluate.clip.folder is not set: CLIP score reads a local transformers "
                            "CLIPModel folder (config.json, model.safetensors, tokenizer files).")
  folder = pathlib.Path(cfg.folder)
  weights = load_clip_model(folder)
  tokenizer = tokenization.load_tokenizer(folder)
  max_length = min(tokenizer.model_max_length, weights.text.max_position_embeddings)
  prompts = [cfg.prompt.format(name) for name in cfg.class_names]
  text_embeds = text_embeddings(weights, tokenization.tokenize(tokenizer, prompts, max_length))   # [classes, P]
  mean, std = _normalization(folder)
  size = weights.vision.image_size
  embed = sharded_outputs(lambda params, images: {"embeds": image_embeddings(weights, params,
                                                                             preprocess(images, size, mean, std))},
                          weights.vision_params, ctx)

  def outputs(batch) -> dict[str, np.ndarray]:
    if batch.labels is None:
      raise ValueError("clip score needs the labels of a generated source to build its prompts.")
    return {"score": clip_scores(embed(batch)["embeds"], text_embeds[batch.labels])}
  return Network(outputs)
