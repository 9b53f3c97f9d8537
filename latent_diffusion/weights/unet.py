"""UNet checkpoints: diffusers UNet2DConditionModel / UNet2DModel folders and CompVis (openaimodel) UNets.

Both formats count the same modules in the same order; they differ in grouping. diffusers groups
by block (down_blocks.{level}, up_blocks.{L-1-level} from the lowest resolution, mid_block);
CompVis numbers every ResNet step: input_blocks.{k} (k=0 the input conv, then one per ResNet or
downsample), middle_block.{0,1,2}, output_blocks.{k}, each entry .0 ResNet, .1 attention and the
upsampler last. CompVis keys here carry no 'model.diffusion_model.' prefix: add it with
mapping.prefixed(rules, '', 'model.diffusion_model').
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.unet import UNet
from latent_diffusion.weights.mapping import Rule, conv, dense, embedding, norm

_COMMON_DEFAULTS = dict(in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0, layers_per_block=2,
                        downsample_padding=1, mid_block_scale_factor=1, dropout=0.0, norm_num_groups=32,
                        norm_eps=1e-5, resnet_time_scale_shift="default", num_class_embeds=None)
# Every config key diffusers 0.42 reads that changes our module, with its default (applied when a
# config.json lacks the key, as older diffusers versions wrote fewer keys).
_DEFAULTS = {
    "UNet2DConditionModel": dict(
        _COMMON_DEFAULTS, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=1280, transformer_layers_per_block=1, attention_head_dim=8, use_linear_projection=False,
        only_cross_attention=False),
    "UNet2DModel": dict(
        _COMMON_DEFAULTS, in_channels=3, out_channels=3, down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
        up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",), block_out_channels=(224, 448, 672, 896),
        attention_head_dim=8, attn_norm_num_groups=None, add_attention=True),
}
# Keys whose listed values are the only ones we implement (absent = diffusers' default, one of them).
_COMMON_REQUIRED = dict(center_input_sample=(False,), act_fn=("silu", "swish"), time_embedding_type=("positional",),
                        time_embedding_dim=(None,), class_embed_type=(None,))
_REQUIRED = {
    "UNet2DConditionModel": dict(
        _COMMON_REQUIRED, mid_block_type=("UNetMidBlock2DCrossAttn",), encoder_hid_dim=(None,),
        encoder_hid_dim_type=(None,), num_attention_heads=(None,), dual_cross_attention=(False,),
        addition_embed_type=(None,), addition_time_embed_dim=(None,), reverse_transformer_layers_per_block=(None,),
        resnet_skip_time_act=(False,), resnet_out_scale_factor=(1.0,), time_embedding_act_fn=(None,),
        timestep_post_act=(None,), time_cond_proj_dim=(None,), conv_in_kernel=(3,), conv_out_kernel=(3,),
        projection_class_embeddings_input_dim=(None,), attention_type=("default",),
        class_embeddings_concat=(False,), mid_block_only_cross_attention=(None, False), cross_attention_norm=(None,)),
    "UNet2DModel": dict(_COMMON_REQUIRED, mid_block_type=("UNetMidBlock2D",), downsample_type=("conv",),
                        upsample_type=("conv",)),
}
# Keys that do not change the network: the default sample size, float16 upcasting (we compute
# attention in the module dtype), the SDXL add-embedding head count (no add-embedding is allowed),
# the step count of 'learned' time embeddings (only 'positional' is allowed).
_IGNORED = {"UNet2DConditionModel": {"sample_size", "upcast_attention", "addition_embed_type_num_heads"},
            "UNet2DModel": {"sample_size", "num_train_timesteps"}}
# Block type names by (class, attention at that level).
_BLOCK_TYPES = {
    "UNet2DConditionModel": {False: ("DownBlock2D", "UpBlock2D"), True: ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")},
    "UNet2DModel": {False: ("DownBlock2D", "UpBlock2D"), True: ("AttnDownBlock2D", "AttnUpBlock2D")},
}


def _unsupported(key: str, value, why: str = "") -> ValueError:
  return ValueError(f"Unsupported UNet config: {key}={value!r}{' (' + why + ')' if why else ''}.")


def _per_level(config: dict, key: str, levels: int, uniform: bool = True) -> list:
  """config[key] as one value per level (an int/bool repeats); `uniform` requires them all equal."""
  value = config[key]
  values = list(value) if isinstance(value, (list, tuple)) else [value] * levels
  if len(values) != levels:
    raise _unsupported(key, value, f"needs one entry per level of block_out_channels ({levels})")
  if uniform and len(set(values)) > 1:
    raise _unsupported(key, value, "only the same value at every level is implemented")
  return values


def _checked(config: Mapping) -> tuple[str, dict]:
  """(class name, config with defaults filled in), or ValueError naming the first unsupported key."""
  name = config.get("_class_name")
  if name not in _DEFAULTS:
    raise _unsupported("_class_name", name, f"expected one of {sorted(_DEFAULTS)}")
  known = _DEFAULTS[name].keys() | _REQUIRED[name].keys() | _IGNORED[name]
  for key, value in config.items():
    if not key.startswith("_") and key not in known:
      raise _unsupported(key, value, "unknown option")
    if key in _REQUIRED[name] and value not in _REQUIRED[name][key]:
      raise _unsupported(key, value, f"implemented: {_REQUIRED[name][key]}")
  return name, {**_DEFAULTS[name], **{k: v for k, v in config.items() if k in _DEFAULTS[name]}}


def _attention_levels(name: str, config: dict, levels: int) -> list[bool]:
  """Which levels have attention, from the block types (down and up must agree, level by level)."""
  kinds = {types[0]: attn for attn, types in _BLOCK_TYPES[name].items()}
  ups = {types[1]: attn for attn, types in _BLOCK_TYPES[name].items()}
  down, up = list(config["down_block_types"]), list(config["up_block_types"])
  if len(down) != levels or len(up) != levels:
    raise _unsupported("down_block_types", down, f"needs {levels} blocks, as block_out_channels and up_block_types")
  for key, types, table in (("down_block_types", down, kinds), ("up_block_types", up, ups)):
    if any(t not in table for t in types):
      raise _unsupported(key, types, f"implemented block types: {sorted(table)}")
  attn = [kinds[t] for t in down]
  if [ups[t] for t in reversed(up)] != attn:
    raise _unsupported("up_block_types", up, f"attention must mirror down_block_types={down}")
  return attn


def from_diffusers_config(config: Mapping) -> UNet:
  """Our UNet for a diffusers UNet2DConditionModel or UNet2DModel config.json dict."""
  name, c = _checked(config)
  channels = list(c["block_out_channels"])
  levels = len(channels)
  if any(ch % channels[0] for ch in channels):
    raise _unsupported("block_out_channels", channels, "every level must be a multiple of the first")
  attn = _attention_levels(name, c, levels)
  if c["resnet_time_scale_shift"] not in ("default", "scale_shift"):
    raise _unsupported("resnet_time_scale_shift", c["resnet_time_scale_shift"], "implemented: default, scale_shift")
  if c["downsample_padding"] not in (0, 1):
    raise _unsupported("downsample_padding", c["downsample_padding"], "implemented: 0, 1")
  if c["norm_num_groups"] is None:
    raise _unsupported("norm_num_groups", None, "GroupNorm groups are required")
  kwargs = dict(
      out_channels=c["out_channels"], in_channels=c["in_channels"], model_channels=channels[0],
      channel_mult=tuple(ch // channels[0] for ch in channels),
      num_res_blocks=_per_level(c, "layers_per_block", levels)[0],
      attention_resolutions=tuple(2 ** level for level in range(levels) if attn[level]),
      num_classes=c["num_class_embeds"], use_scale_shift_norm=c["resnet_time_scale_shift"] == "scale_shift",
      mid_scale_factor=float(c["mid_block_scale_factor"]), downsample_padding=c["downsample_padding"],
      flip_sin_to_cos=c["flip_sin_to_cos"], freq_shift=float(c["freq_shift"]), dropout=float(c["dropout"]),
      groups=c["norm_num_groups"], eps=float(c["norm_eps"]))
  heads = c["attention_head_dim"]
  if name == "UNet2DConditionModel":
    if any(_per_level(c, "only_cross_attention", levels)):
      raise _unsupported("only_cross_attention", c["only_cross_attention"], "implemented: False")
    # diffusers' attention_head_dim of this class is the number of heads (a historical misnomer).
    per_level = _per_level(c, "attention_head_dim", levels, uniform=False)
    for level, (count, ch) in enumerate(zip(per_level, channels)):
      if not isinstance(count, int) or count < 1:
        raise _unsupported("attention_head_dim", heads, "needs a head count (int) per level")
      if (attn[level] or level == levels - 1) and ch % count:
        raise _unsupported("attention_head_dim", heads, f"{count} heads do not divide {ch} channels")
    kwargs.update(num_heads=per_level[0] if len(set(per_level)) == 1 else tuple(per_level),
                  context_dim=_per_level(c, "cross_attention_dim", levels)[0],
                  transformer_depth=_per_level(c, "transformer_layers_per_block", levels)[0],
                  use_linear_projection=c["use_linear_projection"])
  else:
    used = [ch for level, ch in enumerate(channels) if attn[level]] + ([channels[-1]] if c["add_attention"] else [])
    if heads is not None and any(ch % heads for ch in used):
      raise _unsupported("attention_head_dim", heads, f"channels per head must divide the attention widths {used}")
    # UNet2DModel's mid attention has a GroupNorm if attn_norm_num_groups is set, else only with 'default' ResNets.
    groups = c["attn_norm_num_groups"]
    if groups not in (None, c["norm_num_groups"]):
      raise _unsupported("attn_norm_num_groups", groups, f"only norm_num_groups={c['norm_num_groups']} or None")
    mid_norm = groups is not None or c["resnet_time_scale_shift"] == "default" or not c["add_attention"]
    kwargs.update(mid_attention=c["add_attention"], mid_attention_norm=mid_norm,
                  **(dict(num_heads=1) if heads is None else dict(num_head_channels=heads)))
  return UNet(**kwargs)


def _level_heads(unet: UNet, channels: int, level: int, used: bool) -> int:
  try:
    return unet._heads(channels, level)[0]  # pylint: disable=protected-access
  except ValueError:
    if used:
      raise
    return 1  # a level without attention: diffusers ignores its entry


def to_diffusers_config(unet: UNet, class_name: str, sample_size: int | None = None) -> dict:
  """The diffusers config.json dict (class `class_name`) of `unet`; from_diffusers_config inverts it."""
  if class_name not in _DEFAULTS:
    raise ValueError(f"class_name={class_name!r}; expected one of {sorted(_DEFAULTS)}.")
  if unet.in_channels is None:
    raise ValueError("to_diffusers_config needs UNet.in_channels (x plus concat channels) to be set.")
  cond = class_name == "UNet2DConditionModel"
  if cond != (unet.context_dim is not None):
    raise ValueError(f"{class_name} {'needs' if cond else 'cannot have'} cross-attention "
                     f"(context_dim={unet.context_dim}).")
  levels = len(unet.channel_mult)
  channels = [unet.model_channels * m for m in unet.channel_mult]
  attn = [2 ** level in unet.attention_resolutions for level in range(levels)]
  config = dict(
      _class_name=class_name, sample_size=sample_size, in_channels=unet.in_channels, out_channels=unet.out_channels,
      block_out_channels=channels, layers_per_block=unet.num_res_blocks,
      down_block_types=[_BLOCK_TYPES[class_name][a][0] for a in attn],
      up_block_types=[_BLOCK_TYPES[class_name][a][1] for a in reversed(attn)],
      mid_block_type=_REQUIRED[class_name]["mid_block_type"][0], num_class_embeds=unet.num_classes,
      resnet_time_scale_shift="scale_shift" if unet.use_scale_shift_norm else "default",
      mid_block_scale_factor=unet.mid_scale_factor, downsample_padding=unet.downsample_padding,
      flip_sin_to_cos=unet.flip_sin_to_cos, freq_shift=unet.freq_shift, dropout=unet.dropout,
      norm_num_groups=unet.groups, norm_eps=unet.eps, act_fn="silu")
  heads = [_level_heads(unet, ch, level, attn[level] or (level == levels - 1 and unet.mid_attention))
           for level, ch in enumerate(channels)]
  if cond:
    if not unet.mid_attention:
      raise ValueError("UNet2DConditionModel always has mid-block attention (mid_attention=False).")
    return dict(config, cross_attention_dim=unet.context_dim, transformer_layers_per_block=unet.transformer_depth,
                use_linear_projection=unet.use_linear_projection,
                attention_head_dim=heads[0] if len(set(heads)) == 1 else heads)
  used = [level for level in range(levels) if attn[level]] + ([levels - 1] if unet.mid_attention else [])
  single_head = all(heads[level] == 1 for level in used)  # expressed by attention_head_dim=None
  head_dims = {channels[level] // heads[level] for level in used}
  if not single_head and len(head_dims) != 1:
    raise ValueError(f"UNet2DModel has one attention_head_dim for every level; this UNet uses {sorted(head_dims)}.")
  scale_shift = unet.use_scale_shift_norm
  if unet.mid_attention and not unet.mid_attention_norm and not scale_shift:
    raise ValueError("UNet2DModel cannot drop the mid attention GroupNorm with 'default' ResNets.")
  # attn_norm_num_groups=None gives the mid attention a GroupNorm exactly when the ResNets are 'default'.
  explicit_norm = unet.mid_attention and unet.mid_attention_norm and scale_shift
  return dict(config, add_attention=unet.mid_attention, attention_head_dim=None if single_head else head_dims.pop(),
              attn_norm_num_groups=unet.groups if explicit_norm else None)


@dataclasses.dataclass(frozen=True)
class _Block:
  """One of our UNet submodules and its names in both checkpoint formats."""
  ours: str
  kind: str  # 'res' | 'attn' | 'down' | 'up'
  diffusers: str
  compvis: str
  shortcut: bool = False  # a ResNet changing its channel count has a 1x1 shortcut conv


def _blocks(unet: UNet) -> list[_Block]:
  """Every submodule of `unet` in forward order, following the channels to find ResNet shortcuts."""
  mc, mults, n = unet.model_channels, unet.channel_mult, len(unet.channel_mult)
  blocks, skips, ch, k = [], [mc], mc, 1
  for level, mult in enumerate(mults):
    for j in range(unet.num_res_blocks):
      blocks.append(_Block(f"down_{level}_res_{j}", "res", f"down_blocks.{level}.resnets.{j}",
                           f"input_blocks.{k}.0", ch != mc * mult))
      ch = mc * mult
      if 2 ** level in unet.attention_resolutions:
        blocks.append(_Block(f"down_{level}_attn_{j}", "attn", f"down_blocks.{level}.attentions.{j}",
                             f"input_blocks.{k}.1"))
      skips.append(ch)
      k += 1
    if level < n - 1:
      blocks.append(_Block(f"down_{level}_downsample", "down", f"down_blocks.{level}.downsamplers.0",
                           f"input_blocks.{k}.0.op"))
      skips.append(ch)
      k += 1
  blocks.append(_Block("mid_res_0", "res", "mid_block.resnets.0", "middle_block.0"))
  if unet.mid_attention:
    blocks.append(_Block("mid_attn", "attn", "mid_block.attentions.0", "middle_block.1"))
  blocks.append(_Block("mid_res_1", "res", "mid_block.resnets.1", f"middle_block.{2 if unet.mid_attention else 1}"))
  k = 0
  for i, level in enumerate(reversed(range(n))):
    attn = 2 ** level in unet.attention_resolutions
    for j in range(unet.num_res_blocks + 1):
      # The skip concatenation always widens the input, so every up ResNet has a shortcut.
      blocks.append(_Block(f"up_{level}_res_{j}", "res", f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0",
                           ch + skips.pop() != mc * mults[level]))
      ch = mc * mults[level]
      if attn:
        blocks.append(_Block(f"up_{level}_attn_{j}", "attn", f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1"))
      k += 1
    if level > 0:
      blocks.append(_Block(f"up_{level}_upsample", "up", f"up_blocks.{i}.upsamplers.0",
                           f"output_blocks.{k - 1}.{2 if attn else 1}"))
  return blocks


# Our ResNet submodule -> its name in each format.
_RESNET_NAMES = {
    "diffusers": dict(norm1="norm1", conv1="conv1", time_emb_proj="time_emb_proj", norm2="norm2", conv2="conv2",
                      conv_shortcut="conv_shortcut"),
    "compvis": dict(norm1="in_layers.0", conv1="in_layers.2", time_emb_proj="emb_layers.1", norm2="out_layers.0",
                    conv2="out_layers.3", conv_shortcut="skip_connection"),
}
# Our top-level modules -> their names in each format.
_TOP_NAMES = {
    "diffusers": dict(conv_in="conv_in", time_embed_0="time_embedding.linear_1", time_embed_1="time_embedding.linear_2",
                      label_emb="class_embedding", norm_out="conv_norm_out", conv_out="conv_out"),
    "compvis": dict(conv_in="input_blocks.0.0", time_embed_0="time_embed.0", time_embed_1="time_embed.2",
                    label_emb="label_emb", norm_out="out.0", conv_out="out.2"),
}


def _resnet_rules(ours: str, theirs: str, shortcut: bool, names: dict[str, str]) -> list[Rule]:
  rules = (norm(f"{ours}/norm1", f"{theirs}.{names['norm1']}") + conv(f"{ours}/conv1", f"{theirs}.{names['conv1']}")
           + dense(f"{ours}/time_emb_proj", f"{theirs}.{names['time_emb_proj']}")
           + norm(f"{ours}/norm2", f"{theirs}.{names['norm2']}") + conv(f"{ours}/conv2", f"{theirs}.{names['conv2']}"))
  return rules + (conv(f"{ours}/conv_shortcut", f"{theirs}.{names['conv_shortcut']}") if shortcut else [])


def _transformer_rules(unet: UNet, ours: str, theirs: str) -> list[Rule]:
  """A SpatialTransformer: the same names in diffusers and CompVis (SD 1.x conv / SD 2.x linear projections)."""
  project = dense if unet.use_linear_projection else conv
  rules = (norm(f"{ours}/norm", f"{theirs}.norm") + project(f"{ours}/proj_in", f"{theirs}.proj_in")
           + project(f"{ours}/proj_out", f"{theirs}.proj_out"))
  for i in range(unet.transformer_depth):
    o, t = f"{ours}/transformer_blocks_{i}", f"{theirs}.transformer_blocks.{i}"
    for n in (1, 2, 3):
      rules += norm(f"{o}/norm{n}", f"{t}.norm{n}")
    for a in ("attn1", "attn2"):
      rules += [r for p in "qkv" for r in dense(f"{o}/{a}/to_{p}", f"{t}.{a}.to_{p}", bias=False)]
      rules += dense(f"{o}/{a}/to_out", f"{t}.{a}.to_out.0")
    rules += dense(f"{o}/ff/proj_in", f"{t}.ff.net.0.proj") + dense(f"{o}/ff/proj_out", f"{t}.ff.net.2")
  return rules


def _self_attention_rules(ours: str, theirs: str, has_norm: bool) -> list[Rule]:
  """diffusers' Attention block (linear q/k/v with biases)."""
  rules = norm(f"{ours}/group_norm", f"{theirs}.group_norm") if has_norm else []
  rules += [r for p in "qkv" for r in dense(f"{ours}/attention/to_{p}", f"{theirs}.to_{p}")]
  return rules + dense(f"{ours}/attention/to_out", f"{theirs}.to_out.0")


def _rules(unet: UNet, fmt: str) -> list[Rule]:
  top = _TOP_NAMES[fmt]
  rules = (conv("conv_in", top["conv_in"]) + dense("time_embed_0", top["time_embed_0"])
           + dense("time_embed_1", top["time_embed_1"]) + norm("norm_out", top["norm_out"])
           + conv("conv_out", top["conv_out"]))
  if unet.num_classes is not None:
    rules += embedding("label_emb", top["label_emb"])
  for block in _blocks(unet):
    theirs = getattr(block, fmt)
    if block.kind == "res":
      rules += _resnet_rules(block.ours, theirs, block.shortcut, _RESNET_NAMES[fmt])
    elif block.kind == "attn" and unet.context_dim is not None:
      rules += _transformer_rules(unet, block.ours, theirs)
    elif block.kind == "attn":
      rules += _self_attention_rules(block.ours, theirs, block.ours != "mid_attn" or unet.mid_attention_norm)
    else:  # diffusers names the resampling conv '.conv'; CompVis names the downsampler itself ('.op')
      rules += conv(f"{block.ours}/conv", theirs if theirs.endswith(".op") else f"{theirs}.conv")
  return rules


def diffusers_rules(unet: UNet) -> list[Rule]:
  """Every parameter of `unet` <-> its key in a diffusers UNet2DConditionModel / UNet2DModel state dict."""
  return _rules(unet, "diffusers")


def compvis_rules(unet: UNet) -> list[Rule]:
  """Every parameter <-> its key in an original CompVis / Stability UNet (without 'model.diffusion_model.')."""
  if unet.context_dim is None:
    raise NotImplementedError(
        "CompVis names exist here for SpatialTransformer (cross-attention) UNets only: openaimodel's self-attention "
        "block stores q, k and v fused in one 'qkv' conv1d (interleaved per head), which one-tensor-per-parameter "
        "Rules cannot express. Use diffusers_rules for UNet2DModel-style UNets.")
  if not unet.mid_attention:
    raise NotImplementedError("openaimodel UNets always have mid-block attention (mid_attention=False here).")
  # Options that do not rename tensors but that openaimodel's forward pass lacks.
  fixed = dict(flip_sin_to_cos=True, freq_shift=0.0, mid_scale_factor=1.0, downsample_padding=1)
  differing = {key: getattr(unet, key) for key, value in fixed.items() if getattr(unet, key) != value}
  if differing:
    raise ValueError(f"openaimodel UNets compute with {fixed}; a checkpoint of this UNet ({differing}) under CompVis "
                     f"names would load but compute something else.")
  return _rules(unet, "compvis")


def abstract_params(unet: UNet, sample_size: int, in_channels: int):
  """ShapeDtypeStructs of `unet`'s params for inputs [1, sample_size, sample_size, in_channels] (no init runs)."""
  x = jnp.zeros((1, sample_size, sample_size, in_channels))
  kwargs = {}
  if unet.context_dim is not None:
    kwargs["context"] = jnp.zeros((1, 1, unet.context_dim))
  if unet.num_classes is not None:
    kwargs["y"] = jnp.zeros((1,), jnp.int32)
  variables = jax.eval_shape(lambda: unet.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32), **kwargs))
  return nn.unbox(variables)["params"]
