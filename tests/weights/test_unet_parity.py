"""UNet converters against diffusers 0.42 (torch, float32): forward parity on tiny random models, exact
export round trips, CompVis names checked by diffusers' own single-file converter, config round trips
through from_pretrained, and clear errors for mismatched checkpoints and unsupported options.
"""

import inspect
import json

import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from latent_diffusion.models import UNet
from latent_diffusion.weights import files, mapping
from latent_diffusion.weights import unet as unet_weights

B, CONTEXT_LEN, CONTEXT_DIM = 2, 5, 24
_COND = dict(_class_name="UNet2DConditionModel", block_out_channels=(32, 64), norm_num_groups=8, sample_size=8,
             cross_attention_dim=CONTEXT_DIM, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
_PLAIN = dict(_class_name="UNet2DModel", block_out_channels=(32, 64), norm_num_groups=8, sample_size=8,
              down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
CASES = {
    # SD 1.x: conv projections, heads by count (diffusers' attention_head_dim), two ResNets per level.
    "sd1": dict(_COND, layers_per_block=2, attention_head_dim=4),
    # SD 2.x: linear projections, per-level head counts (head dim 16), attention at every level, 2-deep transformers.
    "sd2": dict(_COND, layers_per_block=1, attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True,
                transformer_layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 2,
                up_block_types=("CrossAttnUpBlock2D",) * 2),
    # Class embeddings with scale-shift ResNets, [sin, cos] frequencies shifted by 1, a mid-block scale.
    "class": dict(_COND, layers_per_block=1, attention_head_dim=2, num_class_embeds=7, flip_sin_to_cos=False,
                  freq_shift=1, resnet_time_scale_shift="scale_shift", mid_block_scale_factor=1.5, norm_eps=1e-6),
    # Inpainting: 4 latent + 5 concatenated conditioning channels in, 4 out.
    "inpaint": dict(_COND, layers_per_block=1, attention_head_dim=4, in_channels=9, out_channels=4),
    # DDPM (google/ddpm-cifar10 style): channels per head, bottom/right downsample padding, mid attention.
    "ddpm": dict(_PLAIN, layers_per_block=2, attention_head_dim=16, downsample_padding=0, flip_sin_to_cos=False,
                 freq_shift=1, norm_eps=1e-6),
    # Scale-shift ResNets: the mid attention then has no GroupNorm; one head per block; scaled mid block.
    "ddpm_scale_shift": dict(_PLAIN, layers_per_block=1, attention_head_dim=None, resnet_time_scale_shift="scale_shift",
                             mid_block_scale_factor=2.0),
    # Class-conditional, no mid-block attention.
    "ddpm_class": dict(_PLAIN, layers_per_block=1, attention_head_dim=8, num_class_embeds=5, add_attention=False),
}
_CLASSES = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}


def torch_model(config: dict):
  """A diffusers model of `config` with every parameter re-randomised (diffusers zero-inits some outputs)."""
  torch.manual_seed(0)
  model = _CLASSES[config["_class_name"]](**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim > 1:
        p.normal_(0.0, 1.0 / np.sqrt(np.prod(p.shape[1:])))
      else:
        p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.1)
  return model


def state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items()}


def inputs(config: dict, seed: int):
  """Fresh random (x, t, kwargs): x [B, H, W, C] NHWC, timesteps [B], context / labels as the model needs."""
  rng = np.random.default_rng(seed)
  size = config["sample_size"]
  x = rng.normal(size=(B, size, size, config.get("in_channels", 4 if "cross_attention_dim" in config else 3)))
  kwargs = {}
  if "cross_attention_dim" in config:
    kwargs["context"] = rng.normal(size=(B, CONTEXT_LEN, CONTEXT_DIM))
  if config.get("num_class_embeds"):
    kwargs["y"] = rng.integers(0, config["num_class_embeds"], size=B)
  return x.astype(np.float32), rng.integers(0, 1000, size=B), {k: np.asarray(v) for k, v in kwargs.items()}


def torch_forward(model, x, t, kwargs) -> np.ndarray:
  args = dict(class_labels=torch.from_numpy(kwargs["y"])) if "y" in kwargs else {}
  if "context" in kwargs:
    args["encoder_hidden_states"] = torch.from_numpy(kwargs["context"].astype(np.float32))
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), **args).sample
  return out.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
  config = CASES[request.param]
  model = torch_model(config)
  unet = unet_weights.from_diffusers_config(config)
  expected = unet_weights.abstract_params(unet, config["sample_size"], model.config.in_channels)
  params = mapping.import_params(state_dict(model), unet_weights.diffusers_rules(unet), expected,
                                 source=request.param)
  return request.param, config, model, unet, params


def test_forward_matches_diffusers(case):
  name, config, model, unet, params = case
  x, t, kwargs = inputs(config, seed=1)
  ref = torch_forward(model, x, t, kwargs)
  if name == "inpaint":  # ours takes the conditioning channels separately, diffusers concatenated
    x, kwargs = x[..., :4], dict(kwargs, concat=x[..., 4:])
  out = np.asarray(jax.jit(unet.apply)({"params": params}, x, t, **kwargs))
  error = np.linalg.norm(out - ref) / np.linalg.norm(ref)
  print(f"{name}: relative error {error:.2e}")
  assert out.shape == ref.shape
  assert error <= 1e-5


def test_export_round_trip_is_exact(case):
  _, _, model, unet, params = case
  exported = mapping.export_params(params, unet_weights.diffusers_rules(unet))
  reference = state_dict(model)
  assert exported.keys() == reference.keys()
  for key, value in reference.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_compvis_names_agree_with_diffusers_converter(case):
  """Our params under CompVis names, converted back by diffusers' own single-file code, give its state dict."""
  name, _, model, unet, params = case
  if unet.context_dim is None:
    with pytest.raises(NotImplementedError, match="fused in one 'qkv' conv1d"):
      unet_weights.compvis_rules(unet)
    return
  compvis_unet = unet.clone(flip_sin_to_cos=True, freq_shift=0.0, mid_scale_factor=1.0)
  if compvis_unet != unet:  # same tensors, but openaimodel computes the embedding / mid block otherwise
    with pytest.raises(ValueError, match="openaimodel UNets compute with"):
      unet_weights.compvis_rules(unet)
  rules = mapping.prefixed(unet_weights.compvis_rules(compvis_unet), "", "model.diffusion_model")
  original = {k: torch.from_numpy(v) for k, v in mapping.export_params(params, rules).items()}
  converted = convert_ldm_unet_checkpoint(original, dict(model.config))
  reference = model.state_dict()
  assert converted.keys() == reference.keys(), name
  for key, value in reference.items():
    np.testing.assert_array_equal(converted[key].numpy(), value.numpy(), err_msg=key)
  # And CompVis names import back to the same params.
  again = mapping.import_params({k: v.numpy() for k, v in original.items()}, rules,
                                unet_weights.abstract_params(unet, 8, model.config.in_channels), source=name)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_exported_folder_loads_in_diffusers_and_reimports(case, tmp_path):
  name, config, model, unet, params = case
  exported = unet_weights.to_diffusers_config(unet, config["_class_name"], sample_size=config["sample_size"])
  assert unet_weights.from_diffusers_config(exported) == unet
  files.write_safetensors(mapping.export_params(params, unet_weights.diffusers_rules(unet)),
                          tmp_path / "diffusion_pytorch_model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(exported))
  loaded = _CLASSES[config["_class_name"]].from_pretrained(tmp_path)
  reference = model.state_dict()
  assert loaded.state_dict().keys() == reference.keys(), name
  for key, value in loaded.state_dict().items():
    torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("unet, class_name", [
    # A quickstart-style UNet of our own config: heads by channels, scale-shift ResNets with a normed mid attention.
    (UNet(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
          attention_resolutions=(2,), num_head_channels=8, num_classes=11, use_scale_shift_norm=True, groups=4),
     "UNet2DModel"),
    (UNet(in_channels=8, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
          attention_resolutions=(1, 2), num_head_channels=8, context_dim=6, groups=4), "UNet2DConditionModel"),
])
def test_our_unets_export_to_diffusers_layouts(unet, class_name):
  """The exported config builds a diffusers model whose state dict imports through our rules, and back."""
  config = unet_weights.to_diffusers_config(unet, class_name, sample_size=8)
  model = torch_model(config)
  params = mapping.import_params(state_dict(model), unet_weights.diffusers_rules(unet),
                                 unet_weights.abstract_params(unet, 8, unet.in_channels), source=class_name)
  assert mapping.export_params(params, unet_weights.diffusers_rules(unet)).keys() == model.state_dict().keys()
  again = unet_weights.from_diffusers_config(config)
  assert unet_weights.to_diffusers_config(again, class_name, sample_size=8) == config


def test_defaults_are_diffusers_defaults():
  for name, cls in _CLASSES.items():
    signature = inspect.signature(cls.__init__).parameters
    for key, value in unet_weights._DEFAULTS[name].items():  # pylint: disable=protected-access
      default = signature[key].default
      assert (list(default) if isinstance(default, tuple) else default) == (
          list(value) if isinstance(value, tuple) else value), (name, key)
    required = unet_weights._REQUIRED[name]  # pylint: disable=protected-access
    assert all(signature[key].default in allowed for key, allowed in required.items()), name


@pytest.fixture(scope="module")
def sd1_checkpoint():
  model = torch_model(CASES["sd1"])
  unet = unet_weights.from_diffusers_config(CASES["sd1"])
  return state_dict(model), unet, unet_weights.abstract_params(unet, 8, 4)


@pytest.mark.parametrize("change, message", [
    ("missing", r"missing keys \(1\):\n    down_blocks.0.attentions.1.proj_in.weight"),
    ("extra", r"unexpected keys \(1\):\n    down_blocks.0.attentions.0.extra.weight"),
    ("shape", r"shape mismatches \(1\):\n    conv_out.weight: checkpoint \(4, 32, 1, 1\).* model conv_out/kernel "
              r"wants \(3, 3, 32, 4\)"),
])
def test_mismatched_state_dicts_fail_naming_the_keys(sd1_checkpoint, change, message):
  state, unet, expected = sd1_checkpoint
  state = dict(state)
  if change == "missing":
    del state["down_blocks.0.attentions.1.proj_in.weight"]
  elif change == "extra":
    state["down_blocks.0.attentions.0.extra.weight"] = np.zeros(3, np.float32)
  else:
    state["conv_out.weight"] = np.zeros((4, 32, 1, 1), np.float32)
  with pytest.raises(mapping.WeightImportError, match=message):
    mapping.import_params(state, unet_weights.diffusers_rules(unet), expected, source="sd1")


@pytest.mark.parametrize("base, change, key", [
    ("sd1", dict(addition_embed_type="text_time"), "addition_embed_type"),
    ("sd1", dict(time_cond_proj_dim=8), "time_cond_proj_dim"),
    ("sd1", dict(class_embed_type="timestep"), "class_embed_type"),
    ("sd1", dict(dual_cross_attention=True), "dual_cross_attention"),
    ("sd1", dict(only_cross_attention=True), "only_cross_attention"),
    ("sd1", dict(conv_in_kernel=1), "conv_in_kernel"),
    ("sd1", dict(transformer_layers_per_block=[1, 2]), "transformer_layers_per_block"),
    ("sd1", dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")), "down_block_types"),
    ("sd1", dict(up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")), "up_block_types"),
    ("sd1", dict(mid_block_type="UNetMidBlock2D"), "mid_block_type"),
    ("sd1", dict(attention_head_dim=5), "attention_head_dim"),
    ("sd1", dict(attention_head_dim=None), "attention_head_dim"),
    ("sd1", dict(block_out_channels=(32, 48)), "block_out_channels"),
    ("sd1", dict(some_new_option=1), "some_new_option"),
    ("sd1", dict(_class_name="UNet3DConditionModel"), "_class_name"),
    ("ddpm", dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift"),
    ("ddpm", dict(downsample_type="resnet"), "downsample_type"),
    ("ddpm", dict(attn_norm_num_groups=4), "attn_norm_num_groups"),
    ("ddpm", dict(time_embedding_type="fourier"), "time_embedding_type"),
])
def test_unsupported_options_are_named(base, change, key):
  with pytest.raises(ValueError, match=f"Unsupported UNet config: {key}="):
    unet_weights.from_diffusers_config({**CASES[base], **change})


def test_self_attention_unet_cannot_use_compvis_names_or_the_conditional_class():
  unet = unet_weights.from_diffusers_config(CASES["ddpm"])
  with pytest.raises(NotImplementedError, match="qkv"):
    unet_weights.compvis_rules(unet)
  with pytest.raises(ValueError, match="UNet2DConditionModel needs cross-attention"):
    unet_weights.to_diffusers_config(unet, "UNet2DConditionModel")
  with pytest.raises(ValueError, match="needs UNet.in_channels"):
    unet_weights.to_diffusers_config(unet.clone(in_channels=None), "UNet2DModel")
