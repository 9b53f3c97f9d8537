"""Text encoders <-> Hugging Face transformers folders (config.json + model.safetensors or pytorch_model.bin).

CLIPTextModel files name tensors 'text_model.embeddings.token_embedding.weight' (transformers 5 saves them
without the 'text_model.' prefix), CLIPModel files hold the same under 'text_model.' next to the vision tower,
BertModel files 'embeddings.word_embeddings.weight' (task models such as BertForMaskedLM put them under 'bert.').
The loader accepts each form; the saver writes the form of the reference checkpoints (CLIP with 'text_model.',
BERT without prefix), which transformers 4 and 5 both load.
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.text import ACTIVATIONS, BertEncoder, CLIPTextTransformer
from latent_diffusion.weights import files
from latent_diffusion.weights.mapping import Rule, dense, embedding, export_params, import_params, norm, prefixed

TextEncoder = CLIPTextTransformer | BertEncoder
# Non-persistent buffers that older transformers versions wrote into checkpoints; they hold no weights.
_BUFFERS = ("position_ids", "token_type_ids")


def _clip_rules(module: CLIPTextTransformer) -> list[Rule]:
  rules = (embedding("token_embedding", "embeddings.token_embedding")
           + embedding("position_embedding", "embeddings.position_embedding"))
  for i in range(module.num_layers):
    ours, theirs = f"layers_{i}", f"encoder.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      rules += dense(f"{ours}/attention/{proj}", f"{theirs}.self_attn.{proj}")
    rules += norm(f"{ours}/attention_norm", f"{theirs}.layer_norm1") + norm(f"{ours}/mlp_norm", f"{theirs}.layer_norm2")
    rules += dense(f"{ours}/mlp/fc1", f"{theirs}.mlp.fc1") + dense(f"{ours}/mlp/fc2", f"{theirs}.mlp.fc2")
  return rules + norm("final_layer_norm", "final_layer_norm")


def _bert_rules(module: BertEncoder) -> list[Rule]:
  rules = (embedding("word_embeddings", "embeddings.word_embeddings")
           + embedding("position_embeddings", "embeddings.position_embeddings")
           + embedding("token_type_embeddings", "embeddings.token_type_embeddings")
           + norm("embeddings_layer_norm", "embeddings.LayerNorm"))
  for i in range(module.num_layers):
    ours, theirs = f"layers_{i}", f"encoder.layer.{i}"
    for proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
      rules += dense(f"{ours}/attention/{proj}", f"{theirs}.attention.self.{name}")
    rules += dense(f"{ours}/attention/out_proj", f"{theirs}.attention.output.dense")
    rules += norm(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm")
    rules += dense(f"{ours}/mlp/fc1", f"{theirs}.intermediate.dense")
    rules += dense(f"{ours}/mlp/fc2", f"{theirs}.output.dense")
    rules += norm(f"{ours}/mlp_norm", f"{theirs}.output.LayerNorm")
  return rules + (dense("pooler", "pooler.dense") if module.add_pooling_layer else [])


@dataclasses.dataclass(frozen=True)
class _Architecture:
  """How one transformers model maps onto our module."""
  module: type[nn.Module]
  model_type: str
  architecture: str
  fields: dict[str, str]          # config.json key -> module field
  defaults: dict[str, Any]        # config.json key -> transformers 5.23 default, used when the key is absent
  supported: dict[str, tuple]     # config.json key -> the only values we implement (first = default)
  prefix: str                     # the encoder's prefix inside task / composite checkpoints
  save_prefix: str                # the prefix save_hf_text_encoder writes
  rules: Callable[[Any], list[Rule]]


_COMMON_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
                  "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                  "max_position_embeddings": "max_position_embeddings", "hidden_act": "activation",
                  "layer_norm_eps": "layer_norm_eps"}
_CLIP = _Architecture(
    CLIPTextTransformer, "clip_text_model", "CLIPTextModel", {**_COMMON_FIELDS, "eos_token_id": "eos_token_id"},
    dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
         max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407),
    {}, "text_model", "text_model", _clip_rules)
_BERT = _Architecture(
    BertEncoder, "bert", "BertModel", {**_COMMON_FIELDS, "type_vocab_size": "type_vocab_size"},
    dict(vocab_size=30522, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
         max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12, type_vocab_size=2),
    {"position_embedding_type": ("absolute",), "is_decoder": (False,), "add_cross_attention": (False,)},
    "bert", "", _bert_rules)
_BY_MODEL_TYPE = {"clip_text_model": _CLIP, "clip": _CLIP, "bert": _BERT}


def _architecture(module: nn.Module) -> _Architecture:
  for arch in (_CLIP, _BERT):
    if isinstance(module, arch.module):
      return arch
  raise TypeError(f"{type(module).__name__} is not a text encoder; expected CLIPTextTransformer or BertEncoder.")


def from_hf_config(config: dict, dtype: Any = jnp.float32) -> TextEncoder:
  """Our encoder for a transformers config.json dict ('clip_text_model', 'clip' with text_config, 'bert').

  Raises ValueError naming the key and value of any option we do not implement.
  """
  model_type = config.get("model_type")
  if model_type not in _BY_MODEL_TYPE:
    raise ValueError(f"config.json model_type={model_type!r} is not a supported text encoder; "
                     f"supported: {sorted(_BY_MODEL_TYPE)}.")
  arch = _BY_MODEL_TYPE[model_type]
  if model_type == "clip":
    config = config.get("text_config") or {}
  for key, allowed in arch.supported.items():
    if config.get(key, allowed[0]) not in allowed:
      raise ValueError(f"config.json {key}={config[key]!r} is not supported; supported: {list(allowed)}.")
  values = {key: config.get(key, default) for key, default in arch.defaults.items()}
  if values["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"config.json hidden_act={values['hidden_act']!r} is not supported; "
                     f"supported: {sorted(ACTIVATIONS)}.")
  if "eos_token_id" in values and not isinstance(values["eos_token_id"], int):
    raise ValueError(f"config.json eos_token_id={values['eos_token_id']!r} is not supported; expected one integer.")
  if values["hidden_size"] % values["num_attention_heads"]:
    raise ValueError(f"config.json hidden_size={values['hidden_size']} is not divisible by "
                     f"num_attention_heads={values['num_attention_heads']}.")
  return arch.module(**{arch.fields[key]: value for key, value in values.items()}, dtype=dtype)


def to_hf_config(module: TextEncoder) -> dict:
  """The transformers config.json dict of `module` (CLIPTextModel or BertModel), loadable by from_pretrained."""
  arch = _architecture(module)
  config = {"architectures": [arch.architecture], "model_type": arch.model_type}
  config.update({key: getattr(module, field) for key, field in arch.fields.items()})
  return config | {key: allowed[0] for key, allowed in arch.supported.items()}


def hf_rules(module: TextEncoder, prefix: str = "") -> list[Rule]:
  """Rules for transformers' state-dict names under the dotted `prefix` ('' , 'text_model', 'bert', ...)."""
  return prefixed(_architecture(module).rules(module), "", prefix)


def compvis_clip_rules(module: CLIPTextTransformer) -> list[Rule]:
  """Rules for a CompVis SD1 checkpoint's text encoder, keys after 'cond_stage_model.transformer.'.

  Those are 'text_model.'-prefixed transformers names; checkpoints whose keys lack 'text_model.' take
  `hf_rules(module)` instead.
  """
  if not isinstance(module, CLIPTextTransformer):
    raise TypeError(f"CompVis checkpoints hold a CLIP text encoder, not {type(module).__name__}.")
  return hf_rules(module, _CLIP.prefix)


def abstract_params(module: TextEncoder) -> dict:
  """Shapes of the (boxed, logically annotated) parameters of `module`, nothing computed."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(module.init, jax.random.key(0), ids)["params"]


def load_hf_text_encoder(folder: str | pathlib.Path, dtype: Any = jnp.float32) -> tuple[TextEncoder, dict]:
  """(module, float32 numpy params) of a transformers text-encoder folder (config.json + weights file).

  A BERT file without pooler weights gives a module with add_pooling_layer=False. Raises FileNotFoundError
  for a missing file and WeightImportError naming the keys / shapes that do not match config.json.
  """
  folder = pathlib.Path(folder)
  module = from_hf_config(files.read_json(folder / "config.json", "text encoder config.json"), dtype)
  path = files.weights_file(folder, ("model.safetensors", "pytorch_model.bin"), "text encoder weights")
  state = files.read_checkpoint(path)
  arch = _architecture(module)
  prefix = arch.prefix if any(key.startswith(arch.prefix + ".") for key in state) else ""
  if isinstance(module, BertEncoder):
    pooler = f"{prefix}.pooler.dense.weight" if prefix else "pooler.dense.weight"
    module = module.clone(add_pooling_layer=pooler in state)

  def ignore(key: str) -> bool:
    # A prefixed file is a larger model (CLIP's vision tower, a task head): only the encoder is ours.
    return key.rsplit(".", 1)[-1] in _BUFFERS or (prefix != "" and not key.startswith(prefix + "."))

  params = import_params(state, hf_rules(module, prefix), abstract_params(module), source=str(path), ignore=ignore)
  return module, params


def save_hf_text_encoder(module: TextEncoder, params: dict, folder: str | pathlib.Path,
                         base_config: dict | None = None) -> None:
  """Writes config.json and a float32 model.safetensors that transformers' from_pretrained(folder) loads.

  base_config: the config.json the encoder was imported from (keys the module does not hold, such as CLIP's
  bos / pad token ids or projection_dim, are kept; the module's own fields override it) or extra keys such as
  use_attention_mask (with model_type, which must be the module's).
  """
  folder = pathlib.Path(folder)
  tensors = export_params(params, hf_rules(module, _architecture(module).save_prefix))
  files.write_safetensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
  config = to_hf_config(module)
  if base_config and base_config.get("model_type") == config["model_type"]:   # not a composite CLIPModel config
    config = {**base_config, **config}
  (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
