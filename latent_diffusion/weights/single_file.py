"""Original single-file Stable Diffusion / CompVis LDM checkpoints (.ckpt or .safetensors).

One file holds the UNet under 'model.diffusion_model.', the KL autoencoder under
'first_stage_model.' and (SD 1.x) the CLIP text encoder under 'cond_stage_model.transformer.'.
The architecture is read off the tensor names and shapes and written as the equivalent diffusers
config, so the same converters build the modules. Three things are not in the tensors and follow
the reference releases: attention heads (8 per block with conv projections as in SD 1.x, 64
channels per head with linear projections as in SD 2.x), GroupNorm groups (32) and the noise
schedule (scaled_linear 0.00085 -> 0.012 over 1000 steps; prediction type from the caller).
"""

import pathlib
import re

import numpy as np

from latent_diffusion.bundle import LatentDiffusion
from latent_diffusion.conditioning import Conditioning, TextConditioner
from latent_diffusion.weights import autoencoder as autoencoder_weights
from latent_diffusion.weights import files, mapping, scheduler as scheduler_weights, text as text_weights, tokenization
from latent_diffusion.weights import unet as unet_weights

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SD_SCALING_FACTOR = 0.18215


def _strip(state: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _indices(state: dict, pattern: str) -> list[int]:
  """Sorted distinct integers captured by `pattern` (one group) over the keys."""
  return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def unet_config(state: dict, sample_size: int, norm_groups: int = 32) -> dict:
  """diffusers UNet2DConditionModel config of an openaimodel UNet state dict (prefix stripped)."""
  model_channels, in_channels = state["input_blocks.0.0.weight"].shape[:2]
  blocks = _indices(state, r"input_blocks\.(\d+)\.")
  downsamples = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in state]
  num_res_blocks = downsamples[0] - 1 if downsamples else len(blocks) - 1
  levels = len(downsamples) + 1
  widths, attention = [], []
  for level in range(levels):
    first = 1 + level * (num_res_blocks + 1)
    widths.append(int(state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
    attention.append(f"input_blocks.{first}.1.proj_in.weight" in state)
  context_keys = [k for k in state if k.endswith("attn2.to_k.weight")]
  if not context_keys:
    raise ValueError("The UNet has no cross-attention (attn2.to_k); only text-conditioned SD-style UNets load from "
                     "single files here.")
  proj_in = state[f"input_blocks.{1 + attention.index(True) * (num_res_blocks + 1)}.1.proj_in.weight"]
  linear = proj_in.ndim == 2
  heads = [w // 64 for w in widths] if linear else 8
  depth = len(_indices(state, r"input_blocks\.1\.1\.transformer_blocks\.(\d+)\.")) or 1
  emb_width = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
  return {
      "_class_name": "UNet2DConditionModel", "sample_size": sample_size, "in_channels": int(in_channels),
      "out_channels": int(state["out.2.weight"].shape[0]), "block_out_channels": widths,
      "layers_per_block": num_res_blocks, "cross_attention_dim": int(state[context_keys[0]].shape[1]),
      "attention_head_dim": heads, "use_linear_projection": linear, "transformer_layers_per_block": depth,
      "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
      "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
      "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_num_groups": norm_groups, "norm_eps": 1e-5,
      "flip_sin_to_cos": True, "freq_shift": 0,
      "resnet_time_scale_shift": "scale_shift" if emb_width == 2 * widths[0] else "default",
  }


def vae_config(state: dict, norm_groups: int = 32) -> dict:
  """diffusers AutoencoderKL config of a CompVis KL autoencoder state dict (prefix stripped)."""
  levels = _indices(state, r"encoder\.down\.(\d+)\.")
  widths = [int(state[f"encoder.down.{level}.block.0.conv2.weight"].shape[0]) for level in levels]
  return {
      "_class_name": "AutoencoderKL", "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
      "out_channels": int(state["decoder.conv_out.weight"].shape[0]), "block_out_channels": widths,
      "down_block_types": ["DownEncoderBlock2D"] * len(widths), "up_block_types": ["UpDecoderBlock2D"] * len(widths),
      "layers_per_block": len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\.")),
      "latent_channels": int(state["post_quant_conv.weight"].shape[0]), "norm_num_groups": norm_groups, "act_fn": "silu",
      "scaling_factor": SD_SCALING_FACTOR,
  }


def clip_config(state: dict, tokenizer, head_dim: int = 64) -> dict:
  """transformers CLIPTextConfig dict of an SD 1.x text encoder (keys without CLIP_PREFIX); the
  special token ids come from its tokenizer."""
  tokens = state["text_model.embeddings.token_embedding.weight"]
  hidden = int(tokens.shape[1])
  return {
      "model_type": "clip_text_model", "architectures": ["CLIPTextModel"], "vocab_size": int(tokens.shape[0]),
      "hidden_size": hidden, "num_attention_heads": hidden // head_dim,
      "intermediate_size": int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
      "num_hidden_layers": len(_indices(state, r"text_model\.encoder\.layers\.(\d+)\.")),
      "max_position_embeddings": int(state["text_model.embeddings.position_embedding.weight"].shape[0]),
      "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": tokenizer.bos_token_id,
      "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "projection_dim": hidden,
  }


def _clip_state(state: dict) -> dict:
  clip = _strip(state, CLIP_PREFIX)
  if not clip:
    what = ("an OpenCLIP text encoder (SD 2.x 'cond_stage_model.model.'), which single files do not load here; use "
            "the diffusers folder of the model" if any(k.startswith("cond_stage_model.model.") for k in state)
            else "no text encoder")
    raise ValueError(f"The checkpoint has {what}.")
  # Older SD 1.x files omit the 'text_model.' level.
  return clip if any(k.startswith("text_model.") for k in clip) else {"text_model." + k: v for k, v in clip.items()}


def default_scheduler_config(prediction_type: str) -> dict:
  """The DDIM settings the Stable Diffusion releases sample with."""
  return {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
          "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False,
          "steps_offset": 1, "prediction_type": prediction_type, "timestep_spacing": "leading"}


def load_single_file(path: str | pathlib.Path, tokenizer_folder: str | pathlib.Path,
                     prediction_type: str = "epsilon", image_size: int = 512, norm_groups: int = 32,
                     clip_head_dim: int = 64) -> LatentDiffusion:
  """A LatentDiffusion bundle from one original checkpoint plus a local tokenizer folder (text encoder frozen).

  image_size: the default sampling size in pixels. norm_groups (GroupNorm groups of UNet and VAE)
  and clip_head_dim (channels per text-encoder head) are not recorded in the tensors; the defaults
  are those of every released SD 1.x model.
  """
  state = files.read_checkpoint(path)
  unet_state, vae_state, clip_state = _strip(state, UNET_PREFIX), _strip(state, VAE_PREFIX), _clip_state(state)
  if not unet_state or not vae_state:
    raise ValueError(f"{path} lacks the {'UNet (model.diffusion_model.)' if not unet_state else ''} "
                     f"{'autoencoder (first_stage_model.)' if not vae_state else ''} tensors of an SD/LDM checkpoint.")
  vae_cfg = vae_config(vae_state, norm_groups)
  factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
  unet_cfg = unet_config(unet_state, image_size // factor, norm_groups)
  unet = unet_weights.from_diffusers_config(unet_cfg)
  unet_params = mapping.import_params(
      unet_state, unet_weights.compvis_rules(unet),
      unet_weights.abstract_params(unet, unet_cfg["sample_size"], unet_cfg["in_channels"]), source=f"{path} (UNet)")
  vae = autoencoder_weights.from_diffusers_config(vae_cfg)
  vae_params = mapping.import_params(vae_state, autoencoder_weights.compvis_rules(vae),
                                     autoencoder_weights.abstract_params(vae, 8 * factor), source=f"{path} (VAE)")
  tokenizer = tokenization.load_tokenizer(tokenizer_folder)
  text_config = clip_config(clip_state, tokenizer, clip_head_dim)
  text_encoder = text_weights.from_hf_config(text_config)
  text_params = mapping.import_params(clip_state, text_weights.compvis_clip_rules(text_encoder),
                                      text_weights.abstract_params(text_encoder), source=f"{path} (text encoder)",
                                      ignore=lambda key: key.endswith("position_ids"))
  text = TextConditioner(tokenizer, text_encoder, text_params, train_encoder=False)
  scheduler_cfg = default_scheduler_config(prediction_type)
  schedule, sampler, options = scheduler_weights.from_diffusers_scheduler(scheduler_cfg)
  size = unet_cfg["sample_size"]
  return LatentDiffusion(
      unet=unet, autoencoder=vae, conditioning=Conditioning([text]), schedule=schedule,
      schedule_config=scheduler_weights.schedule_config_from_diffusers(scheduler_cfg), scale_factor=SD_SCALING_FACTOR,
      latent_shape=(size, size, vae.embed_dim), sampler=sampler, sampler_options=options,
      params={"unet": unet_params, "autoencoder": vae_params, "conditioner": {"text": {"encoder": text_params}}},
      source_configs={"unet": unet_cfg, "vae": vae_cfg, "scheduler": scheduler_cfg, "text_encoder": text_config})


def save_single_file(model: LatentDiffusion, path: str | pathlib.Path) -> None:
  """Writes the UNet, autoencoder and CLIP text encoder as one original-format .safetensors file."""
  text = model.conditioning["text"]
  tensors = {}
  for params, rules, prefix in (
      (model.params["unet"], unet_weights.compvis_rules(model.unet), UNET_PREFIX),
      (model.params["autoencoder"], autoencoder_weights.compvis_rules(model.autoencoder), VAE_PREFIX),
      (model.params["conditioner"]["text"]["encoder"], text_weights.compvis_clip_rules(text.encoder), CLIP_PREFIX)):
    tensors.update({prefix + k: v for k, v in mapping.export_params(params, rules).items()})
  files.write_safetensors({k: np.asarray(v) for k, v in tensors.items()}, path)
