"""A transformers CLIPModel folder (config.json + model.safetensors / pytorch_model.bin) -> our two towers and
projections, for CLIP score. The text tower loads through weights.text; the vision tower's tensors are
'vision_model.*', the projections 'visual_projection.weight' and 'text_projection.weight' ([proj, width])."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.models.clip_vision import CLIPVisionTransformer
from latent_diffusion.models.text import ACTIVATIONS, CLIPTextTransformer
from latent_diffusion.weights import files, text
from latent_diffusion.weights.mapping import Rule, WeightImportError, dense, embedding, import_params, norm

# CLIPVisionConfig defaults of transformers 5.23, used where config.json omits a key.
_VISION_DEFAULTS = dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                        num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_VISION_FIELDS = {"image_size": "image_size", "patch_size": "patch_size", "hidden_size": "hidden_size",
                  "intermediate_size": "intermediate_size", "num_hidden_layers": "num_layers",
                  "num_attention_heads": "num_heads", "hidden_act": "activation", "layer_norm_eps": "layer_norm_eps"}


@dataclasses.dataclass
class CLIPModelWeights:
  vision: CLIPVisionTransformer
  vision_params: dict
  text: CLIPTextTransformer
  text_params: dict
  visual_projection: np.ndarray   # [vision width, projection dim]
  text_projection: np.ndarray     # [text width, projection dim]


def vision_rules(module: CLIPVisionTransformer, prefix: str = "vision_model") -> list[Rule]:
  rules = [Rule(("class_embedding",), f"{prefix}.embeddings.class_embedding"),
           Rule(("patch_embedding", "kernel"), f"{prefix}.embeddings.patch_embedding.weight", "conv")]
  rules += embedding("position_embedding", f"{prefix}.embeddings.position_embedding")
  rules += norm("pre_layrnorm", f"{prefix}.pre_layrnorm") + norm("post_layernorm", f"{prefix}.post_layernorm")
  for i in range(module.num_layers):
    ours, theirs = f"layers_{i}", f"{prefix}.encoder.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      rules += dense(f"{ours}/attention/{proj}", f"{theirs}.self_attn.{proj}")
    rules += norm(f"{ours}/attention_norm", f"{theirs}.layer_norm1") + norm(f"{ours}/mlp_norm", f"{theirs}.layer_norm2")
    rules += dense(f"{ours}/mlp/fc1", f"{theirs}.mlp.fc1") + dense(f"{ours}/mlp/fc2", f"{theirs}.mlp.fc2")
  return rules


def vision_from_config(config: dict) -> CLIPVisionTransformer:
  values = {**_VISION_DEFAULTS, **{k: v for k, v in (config.get("vision_config") or {}).items() if k in _VISION_DEFAULTS}}
  if values["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"config.json vision_config.hidden_act={values['hidden_act']!r} is not supported; "
                     f"supported: {sorted(ACTIVATIONS)}.")
  return CLIPVisionTransformer(**{_VISION_FIELDS[k]: v for k, v in values.items()})


def load_clip_model(folder: str | pathlib.Path) -> CLIPModelWeights:
  """Both towers and projections of a CLIPModel folder (float32). FileNotFoundError / WeightImportError name the
  missing file or the mismatched tensors."""
  folder = pathlib.Path(folder)
  config = files.read_json(folder / "config.json", "CLIPModel config.json")
  if config.get("model_type") != "clip":
    raise WeightImportError(f"{folder / 'config.json'} has model_type={config.get('model_type')!r}; CLIP score "
                            f"needs a CLIPModel folder (model_type 'clip', both towers).")
  text_module, text_params = text.load_hf_text_encoder(folder)
  vision = vision_from_config(config)
  state = files.read_checkpoint(files.weights_file(folder, ("model.safetensors", "pytorch_model.bin"), "CLIP weights"))
  side = vision.image_size
  abstract = jax.eval_shape(vision.init, jax.random.key(0), jnp.zeros((1, side, side, 3)))["params"]
  vision_params = import_params(state, vision_rules(vision), abstract, source=str(folder),
                                ignore=lambda key: not key.startswith("vision_model.") or key.endswith("position_ids"))
  projections = {}
  for name in ("visual_projection", "text_projection"):
    if f"{name}.weight" not in state:
      raise WeightImportError(f"{folder}: no {name}.weight; CLIP score needs CLIPModel's projections.")
    projections[name] = np.asarray(state[f"{name}.weight"], np.float32).T
  return CLIPModelWeights(vision, vision_params, text_module, text_params, **projections)
