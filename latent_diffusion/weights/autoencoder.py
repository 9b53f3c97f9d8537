"""Autoencoder checkpoints: diffusers AutoencoderKL / VQModel folders and CompVis (LDM, SD) VAEs.

diffusers names levels by block (encoder.down_blocks.{l}, decoder.up_blocks.{L-1-l} counted from the
lowest resolution) and stores the mid-block attention as linears; CompVis names them by level
(encoder.down.{l}, decoder.up.{l}) with 1x1-conv attention. Keys here carry no 'first_stage_model.'
prefix: add it with mapping.prefixed(rules, '', 'first_stage_model').
"""

import dataclasses

import jax
import jax.numpy as jnp

from latent_diffusion.models.autoencoder import AutoencoderKL, VQModel
from latent_diffusion.models.layers import Dtype
from latent_diffusion.weights.mapping import Rule, conv, dense, embedding, norm, prefixed

Autoencoder = AutoencoderKL | VQModel

_COMMON_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
                        act_fn="silu", norm_num_groups=32, sample_size=32, scaling_factor=0.18215,
                        mid_block_add_attention=True)
# Every config key diffusers 0.42 knows, with its default (applied when a config.json lacks the key).
_DEFAULTS = {
    "AutoencoderKL": dict(_COMMON_DEFAULTS, latent_channels=4, shift_factor=None, latents_mean=None, latents_std=None,
                          force_upcast=True, use_quant_conv=True, use_post_quant_conv=True),
    "VQModel": dict(_COMMON_DEFAULTS, latent_channels=3, num_vq_embeddings=256, vq_embed_dim=None, norm_type="group",
                    lookup_from_codebook=False, force_upcast=False),
}
# Keys whose only value we implement. sample_size (tiling), force_upcast (precision hint) and
# lookup_from_codebook (VQModel.decode_indices covers it) do not change the network.
_REQUIRED = {"act_fn": "silu", "norm_type": "group", "shift_factor": None, "latents_mean": None, "latents_std": None}
_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
_EPS = 1e-6  # diffusers fixes every VAE norm epsilon to 1e-6


def _class_name(config: dict) -> str:
  name = config.get("_class_name")
  if name not in _DEFAULTS:
    raise ValueError(f"_class_name={name!r} is not an autoencoder we convert; expected one of {sorted(_DEFAULTS)}.")
  return name


def _resolved(config: dict) -> dict:
  """The config with diffusers' defaults filled in; ValueError naming any key or value we cannot express."""
  name = _class_name(config)
  unknown = sorted(k for k in config if not k.startswith("_") and k not in _DEFAULTS[name])
  if unknown:
    raise ValueError(f"{name} config has keys this converter does not know: {unknown}.")
  config = {**_DEFAULTS[name], **config}
  for key, value in _REQUIRED.items():
    if key in config and config[key] != value:
      raise ValueError(f"Unsupported {name} option {key}={config[key]!r}; only {value!r} is implemented.")
  levels = len(config["block_out_channels"])
  for key, block in _BLOCK_TYPES.items():
    if list(config[key]) != [block] * levels:
      raise ValueError(f"Unsupported {name} option {key}={list(config[key])}; only {levels} x {block!r} "
                       f"(one per block_out_channels entry) is implemented.")
  return config


def from_diffusers_config(config: dict, dtype: Dtype = jnp.float32) -> Autoencoder:
  """Our AutoencoderKL or VQModel (by `_class_name`) equal to the diffusers model of a config.json dict."""
  config = _resolved(config)
  widths = tuple(config["block_out_channels"])
  ch = widths[0]
  if any(w % ch for w in widths):
    raise ValueError(f"Unsupported block_out_channels={list(widths)}: every width must be a multiple of the first "
                     f"(we build widths as ch * ch_mult).")
  shared = dict(in_channels=config["in_channels"], out_channels=config["out_channels"], ch=ch,
                ch_mult=tuple(w // ch for w in widths), num_res_blocks=config["layers_per_block"],
                z_channels=config["latent_channels"], groups=config["norm_num_groups"], eps=_EPS,
                mid_attention=config["mid_block_add_attention"], dtype=dtype)
  if config["_class_name"] == "AutoencoderKL":
    return AutoencoderKL(embed_dim=config["latent_channels"], use_quant_conv=config["use_quant_conv"],
                         use_post_quant_conv=config["use_post_quant_conv"], **shared)
  embed_dim = config["vq_embed_dim"] or config["latent_channels"]
  return VQModel(embed_dim=embed_dim, num_embeddings=config["num_vq_embeddings"], **shared)


def scaling_factor(config: dict) -> float:
  """The latent scale of a diffusers config (latents fed to the diffusion model are z * scale)."""
  return float(_resolved(config)["scaling_factor"])


def to_diffusers_config(module: Autoencoder, scaling_factor: float) -> dict:  # pylint: disable=redefined-outer-name
  """The diffusers config.json dict of `module` (inverse of from_diffusers_config).

  VQModel's beta / legacy and the dropout rate only matter in training, so they are not exported.
  """
  name = type(module).__name__
  if module.ch_mult[0] != 1:
    raise ValueError(f"ch_mult={module.ch_mult}: diffusers' first level is as wide as conv_in, so ch_mult[0] "
                     f"must be 1.")
  if module.eps != _EPS:
    raise ValueError(f"eps={module.eps}: diffusers' autoencoders use {_EPS}.")
  levels = len(module.ch_mult)
  config = dict(_class_name=name, in_channels=module.in_channels,
                out_channels=module.in_channels if module.out_channels is None else module.out_channels,
                down_block_types=[_BLOCK_TYPES["down_block_types"]] * levels,
                up_block_types=[_BLOCK_TYPES["up_block_types"]] * levels,
                block_out_channels=[module.ch * m for m in module.ch_mult], layers_per_block=module.num_res_blocks,
                act_fn="silu", latent_channels=module.z_channels, norm_num_groups=module.groups,
                scaling_factor=float(scaling_factor), mid_block_add_attention=module.mid_attention)
  if isinstance(module, VQModel):
    return dict(config, num_vq_embeddings=module.num_embeddings, vq_embed_dim=module.embed_dim, norm_type="group")
  if module.embed_dim != module.z_channels:
    raise ValueError(f"embed_dim={module.embed_dim} != z_channels={module.z_channels}: diffusers' AutoencoderKL "
                     f"has one latent_channels for both.")
  return dict(config, use_quant_conv=module.use_quant_conv, use_post_quant_conv=module.use_post_quant_conv)


@dataclasses.dataclass(frozen=True)
class _Naming:
  """A checkpoint's names of the coder blocks: str.format templates of level, rev (= levels - 1 - level), j."""
  down_resnet: str
  downsample: str
  up_resnet: str
  upsample: str
  mid_resnet: str            # n = 0, 1 (n1 = n + 1)
  mid_attention: str
  attention: tuple[str, str, str, str, str]   # norm, q, k, v, output projection
  attention_layout: str
  shortcut: str
  norm_out: str


_DIFFUSERS = _Naming(down_resnet="down_blocks.{level}.resnets.{j}",
                     downsample="down_blocks.{level}.downsamplers.0.conv", up_resnet="up_blocks.{rev}.resnets.{j}",
                     upsample="up_blocks.{rev}.upsamplers.0.conv",
                     mid_resnet="mid_block.resnets.{n}", mid_attention="mid_block.attentions.0",
                     attention=("group_norm", "to_q", "to_k", "to_v", "to_out.0"), attention_layout="linear",
                     shortcut="conv_shortcut", norm_out="conv_norm_out")
_COMPVIS = _Naming(down_resnet="down.{level}.block.{j}", downsample="down.{level}.downsample.conv",
                   up_resnet="up.{level}.block.{j}", upsample="up.{level}.upsample.conv",
                   mid_resnet="mid.block_{n1}", mid_attention="mid.attn_1",
                   attention=("norm", "q", "k", "v", "proj_out"), attention_layout="conv1x1_linear",
                   shortcut="nin_shortcut", norm_out="norm_out")


def _resnet(ours: str, theirs: str, in_channels: int, out_channels: int, names: _Naming) -> list[Rule]:
  rules = norm(f"{ours}/norm1", f"{theirs}.norm1") + conv(f"{ours}/conv1", f"{theirs}.conv1")
  rules += norm(f"{ours}/norm2", f"{theirs}.norm2") + conv(f"{ours}/conv2", f"{theirs}.conv2")
  if in_channels != out_channels:
    rules += conv(f"{ours}/conv_shortcut", f"{theirs}.{names.shortcut}")
  return rules


def _mid(module: Autoencoder, width: int, names: _Naming) -> list[Rule]:
  res = lambda n: _resnet(f"mid_res_{n}", names.mid_resnet.format(n=n, n1=n + 1), width, width, names)
  rules = res(0)
  if module.mid_attention:
    theirs = [f"{names.mid_attention}.{part}" for part in names.attention]
    rules += norm("mid_attn/group_norm", theirs[0])
    for ours, key in zip(("to_q", "to_k", "to_v", "to_out"), theirs[1:]):
      rules += dense(f"mid_attn/attention/{ours}", key, layout=names.attention_layout)
  return rules + res(1)


def _encoder(module: Autoencoder, names: _Naming) -> list[Rule]:
  rules, width = conv("conv_in", "conv_in"), module.ch
  for level, mult in enumerate(module.ch_mult):
    for j in range(module.num_res_blocks):
      rules += _resnet(f"down_{level}_res_{j}", names.down_resnet.format(level=level, j=j), width, module.ch * mult,
                       names)
      width = module.ch * mult
    if level < len(module.ch_mult) - 1:
      rules += conv(f"down_{level}_downsample/conv", names.downsample.format(level=level))
  return rules + _mid(module, width, names) + norm("norm_out", names.norm_out) + conv("conv_out", "conv_out")


def _decoder(module: Autoencoder, names: _Naming) -> list[Rule]:
  width = module.ch * module.ch_mult[-1]
  rules = conv("conv_in", "conv_in") + _mid(module, width, names)
  levels = len(module.ch_mult)
  for level in reversed(range(levels)):
    at = dict(level=level, rev=levels - 1 - level)
    for j in range(module.num_res_blocks + 1):
      rules += _resnet(f"up_{level}_res_{j}", names.up_resnet.format(j=j, **at), width,
                       module.ch * module.ch_mult[level], names)
      width = module.ch * module.ch_mult[level]
    if level > 0:
      rules += conv(f"up_{level}_upsample/conv", names.upsample.format(**at))
  return rules + norm("norm_out", names.norm_out) + conv("conv_out", "conv_out")


def _rules(module: Autoencoder, names: _Naming) -> list[Rule]:
  rules = prefixed(_encoder(module, names), "encoder", "encoder") + prefixed(_decoder(module, names), "decoder",
                                                                             "decoder")
  if isinstance(module, VQModel):
    return rules + conv("quant_conv", "quant_conv") + embedding("quantize", "quantize.embedding") + conv(
        "post_quant_conv", "post_quant_conv")
  rules += conv("quant_conv", "quant_conv") if module.use_quant_conv else []
  return rules + (conv("post_quant_conv", "post_quant_conv") if module.use_post_quant_conv else [])


def diffusers_rules(module: Autoencoder) -> list[Rule]:
  """Our params <-> a diffusers AutoencoderKL / VQModel state dict (diffusion_pytorch_model.safetensors)."""
  return _rules(module, _DIFFUSERS)


def compvis_rules(module: Autoencoder) -> list[Rule]:
  """Our params <-> a CompVis first-stage model's tensors, without the 'first_stage_model.' prefix."""
  return _rules(module, _COMPVIS)


def abstract_params(module: Autoencoder, sample_size: int | None = None):
  """The module's params as (logically boxed) jax.ShapeDtypeStructs, without computing anything.

  Shapes do not depend on the image size; sample_size (default: the downsampling factor) only has
  to be divisible by it.
  """
  size = sample_size or module.downsampling_factor
  x = jnp.zeros((1, size, size, module.in_channels), jnp.float32)
  rngs = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  return jax.eval_shape(lambda: module.init(rngs, x))["params"]

