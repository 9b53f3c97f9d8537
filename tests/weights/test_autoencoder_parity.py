"""Autoencoders against diffusers' AutoencoderKL / VQModel (torch, random tiny models) through our converters.

Parity: relative error ||ours - torch|| / ||torch|| <= 1e-5 (float32), NHWC here vs NCHW there. CompVis
names are checked against diffusers' own CompVis -> diffusers converter (convert_ldm_vae_checkpoint).
"""

import functools
import json
import types

import diffusers
import jax
import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from latent_diffusion.models.autoencoder import AutoencoderKL, VQModel
from latent_diffusion.weights import autoencoder as ae_weights
from latent_diffusion.weights.files import write_safetensors
from latent_diffusion.weights.mapping import WeightImportError, export_params, import_params, prefixed

TOLERANCE = 1e-5
KL_CASES = {
    "kl_f2_two_layers": dict(block_out_channels=(32, 64), layers_per_block=2, image=16),
    "kl_f4_no_attention_no_quant_convs": dict(block_out_channels=(16, 32, 32), in_channels=1, out_channels=2,
                                              use_quant_conv=False, use_post_quant_conv=False,
                                              mid_block_add_attention=False, image=16),
    "kl_f8": dict(block_out_channels=(16, 16, 32, 32), image=32),
    "kl_f16": dict(block_out_channels=(8, 16, 16, 16, 16), image=32),
}
VQ_CASE = dict(block_out_channels=(16, 32, 32), latent_channels=4, vq_embed_dim=3, num_vq_embeddings=32, image=16)
ERRORS: dict[str, float] = {}  # case -> max relative error, printed at the end (pytest -s)


def rel_error(name: str, ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape, (name, ours.shape, reference.shape)
  error = float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))
  ERRORS[name] = max(error, ERRORS.get(name, 0.0))
  return error


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def randomise(model: torch.nn.Module, seed: int):
  """Fan-in scaled normal weights, norm scales near 1, small biases: every tensor matters to the output."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim > 1:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p[0].numel()))
      else:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))


def build(class_name: str, case: dict, seed: int) -> types.SimpleNamespace:
  """A random diffusers model (.torch) of a case's options and our module (.module) from its config."""
  options = {k: v for k, v in case.items() if k != "image"}
  levels = len(options["block_out_channels"])
  config = dict(down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                norm_num_groups=8, **options)
  torch_model = getattr(diffusers, class_name)(**config).eval()
  randomise(torch_model, seed)
  module = ae_weights.from_diffusers_config(dict(torch_model.config, _class_name=class_name))
  return types.SimpleNamespace(torch=torch_model, module=module, image=case["image"])


def load(case: types.SimpleNamespace) -> types.SimpleNamespace:
  """Adds the torch tensors (.state), our abstract params and our params imported by diffusers_rules."""
  case.state = {k: v.numpy() for k, v in case.torch.state_dict().items()}
  case.abstract = ae_weights.abstract_params(case.module, case.image)
  case.params = import_params(case.state, ae_weights.diffusers_rules(case.module), case.abstract,
                              source=f"tiny diffusers {type(case.module).__name__}")
  return case


@functools.cache
def case_named(name: str):
  """A loaded case, built once for every test that uses it."""
  if name in KL_CASES:
    return load(build("AutoencoderKL", KL_CASES[name], seed=list(KL_CASES).index(name)))
  case = build("VQModel", VQ_CASE, seed=len(KL_CASES))
  case.x = np.random.default_rng(1).uniform(-1, 1, (2, case.image, case.image, 3)).astype(np.float32)
  with torch.no_grad():  # codes spread like the encoded latents, so that many different codes are nearest
    h = case.torch.encode(nchw(case.x)).latents
    codebook = case.torch.quantize.embedding.weight
    codebook.copy_(h.mean() + h.std() * torch.randn(codebook.shape, generator=torch.Generator().manual_seed(3)))
  return load(case)


@pytest.fixture(params=list(KL_CASES))
def kl(request):
  return case_named(request.param)


@pytest.fixture
def vq():
  return case_named("vq")


@pytest.fixture(params=list(KL_CASES) + ["vq"])
def any_case(request):
  return case_named(request.param)


@pytest.fixture(scope="module", autouse=True)
def report_errors():
  yield
  print("\nmax relative errors: " + ", ".join(f"{k}={v:.2e}" for k, v in sorted(ERRORS.items())))


def test_kl_encode_and_decode_match_diffusers(kl, request):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, kl.image, kl.image, kl.module.in_channels)).astype(np.float32)
  f = kl.module.downsampling_factor
  z = rng.normal(size=(2, kl.image // f, kl.image // f, kl.module.embed_dim)).astype(np.float32)
  variables = {"params": kl.params}
  posterior = jax.jit(lambda v, x: kl.module.apply(v, x, method=AutoencoderKL.encode))(variables, x)
  decoded = jax.jit(lambda v, z: kl.module.apply(v, z, method=AutoencoderKL.decode))(variables, z)
  with torch.no_grad():
    dist = kl.torch.encode(nchw(x)).latent_dist
    ref_decoded = kl.torch.decode(nchw(z)).sample
  name = request.node.callspec.id
  assert rel_error(f"{name}/mean", posterior.mean, nhwc(dist.mean)) <= TOLERANCE
  assert rel_error(f"{name}/logvar", posterior.logvar, nhwc(dist.logvar)) <= TOLERANCE
  assert rel_error(f"{name}/decode", decoded, nhwc(ref_decoded)) <= TOLERANCE


def test_vq_encode_quantize_and_decode_match_diffusers(vq):
  variables = {"params": vq.params}
  h = jax.jit(lambda v, x: vq.module.apply(v, x, method=VQModel.encode))(variables, vq.x)
  quantized = jax.jit(lambda v, h: vq.module.apply(v, h, method=VQModel.quantize))(variables, h)
  decoded = jax.jit(lambda v, h: vq.module.apply(v, h, method=VQModel.decode))(variables, h)
  from_indices = jax.jit(lambda v, i: vq.module.apply(v, i, method=VQModel.decode_indices))(variables,
                                                                                             quantized.indices)
  with torch.no_grad():
    ref_h = vq.torch.encode(nchw(vq.x)).latents
    ref_q, ref_loss, (_, _, ref_indices) = vq.torch.quantize(ref_h)
    ref_decoded = vq.torch.decode(ref_h)
  assert rel_error("vq/encode", h, nhwc(ref_h)) <= TOLERANCE
  indices = np.asarray(quantized.indices)
  np.testing.assert_array_equal(indices.ravel(), ref_indices.numpy().ravel())
  assert len(np.unique(indices)) >= 8  # the comparison covers many codes, not one
  assert rel_error("vq/quantized", quantized.latents, nhwc(ref_q)) <= TOLERANCE
  assert rel_error("vq/loss", quantized.loss, ref_loss.numpy()) <= TOLERANCE
  assert rel_error("vq/decode", decoded, nhwc(ref_decoded.sample)) <= TOLERANCE
  assert rel_error("vq/decode_indices", from_indices, nhwc(ref_decoded.sample)) <= TOLERANCE


def test_diffusers_export_round_trip_is_exact(any_case):
  exported = export_params(any_case.params, ae_weights.diffusers_rules(any_case.module))
  assert exported.keys() == any_case.state.keys()
  for key, value in exported.items():
    np.testing.assert_array_equal(value, any_case.state[key], err_msg=key)


def test_compvis_names_agree_with_diffusers_converter(any_case):
  rules = prefixed(ae_weights.compvis_rules(any_case.module), "", "first_stage_model")
  compvis = export_params(any_case.params, rules)
  converted = convert_ldm_vae_checkpoint(compvis, dict(any_case.torch.config))
  # diffusers' converter knows no VQ codebook; CompVis and diffusers both call it quantize.embedding.
  codebook = {"quantize.embedding.weight"} & any_case.state.keys()
  for key in codebook:
    converted[key] = compvis[f"first_stage_model.{key}"]
  assert converted.keys() == any_case.state.keys()
  for key, value in converted.items():
    np.testing.assert_array_equal(np.asarray(value), any_case.state[key], err_msg=key)
  reimported = import_params(compvis, rules, any_case.abstract, source="CompVis export")
  jax.tree.map(np.testing.assert_array_equal, reimported, any_case.params)


def test_config_round_trip_loads_in_diffusers(any_case, tmp_path):
  config = ae_weights.to_diffusers_config(any_case.module, scaling_factor=0.5)
  assert ae_weights.scaling_factor(config) == 0.5
  assert ae_weights.from_diffusers_config(config) == any_case.module
  (tmp_path / "config.json").write_text(json.dumps(config))
  write_safetensors(export_params(any_case.params, ae_weights.diffusers_rules(any_case.module)),
                    tmp_path / "diffusion_pytorch_model.safetensors")
  loaded = getattr(diffusers, config["_class_name"]).from_pretrained(tmp_path, low_cpu_mem_usage=False)
  for key, value in any_case.torch.config.items():
    if key not in ("scaling_factor", "sample_size", "force_upcast") and not key.startswith("_"):
      assert loaded.config[key] == value or list(loaded.config[key]) == list(value), key
  for key, value in loaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), any_case.state[key], err_msg=key)


def test_mismatched_checkpoints_name_the_offending_keys(vq):
  rules = ae_weights.diffusers_rules(vq.module)
  broken = dict(vq.state)
  del broken["decoder.up_blocks.0.resnets.1.conv2.weight"]
  broken["encoder.mid_block.attentions.0.to_q.lora.weight"] = np.zeros(3, np.float32)
  broken["quantize.embedding.weight"] = np.zeros((16, 3), np.float32)
  with pytest.raises(WeightImportError) as info:
    import_params(broken, rules, vq.abstract, source="broken VQModel")
  message = str(info.value)
  assert "missing keys (1)" in message and "decoder.up_blocks.0.resnets.1.conv2.weight" in message
  assert "unexpected keys (1)" in message and "encoder.mid_block.attentions.0.to_q.lora.weight" in message
  assert "quantize.embedding.weight: checkpoint (16, 3)" in message and "quantize/embedding wants (32, 3)" in message


BASE = dict(_class_name="AutoencoderKL", block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2)


@pytest.mark.parametrize("key, value", [
    ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
    ("up_block_types", ["UpDecoderBlock2D"]),
    ("act_fn", "gelu"),
    ("latents_mean", [0.0] * 4),
    ("shift_factor", 0.1),
    ("block_out_channels", [48, 64]),
    ("_class_name", "AutoencoderTiny"),
    ("encoder_hid_dim", 8),
])
def test_unsupported_configs_name_the_key(key, value):
  with pytest.raises(ValueError, match=key):
    ae_weights.from_diffusers_config(dict(BASE, **{key: value}))


def test_unsupported_vq_norm_and_unexportable_modules_fail_clearly():
  with pytest.raises(ValueError, match="norm_type='spatial'"):
    ae_weights.from_diffusers_config(dict(BASE, _class_name="VQModel", norm_type="spatial"))
  with pytest.raises(ValueError, match=r"ch_mult\[0\] must be 1"):
    ae_weights.to_diffusers_config(AutoencoderKL(ch=32, ch_mult=(2, 4)), 1.0)
  with pytest.raises(ValueError, match="embed_dim=3 != z_channels=4"):
    ae_weights.to_diffusers_config(AutoencoderKL(ch=32, ch_mult=(1, 2), embed_dim=3), 1.0)
