"""End to end against diffusers: a tiny random StableDiffusionPipeline saved to disk, loaded by our
pipeline, gives the same images; export / re-import / diffusers from_pretrained are lossless;
single-file (original layout) round trip; clear errors for broken folders; the sampling CLI."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from latent_diffusion import text_to_image  # noqa: E402
from latent_diffusion.weights import files, mapping, pretrained, single_file  # noqa: E402
from latent_diffusion.weights import scheduler as scheduler_weights  # noqa: E402
from tests import text_fixtures  # noqa: E402

PROMPTS = ["a red square", "two cats"]
NUM_STEPS = 6


def _randomize(module: torch.nn.Module, seed: int) -> None:
  """diffusers zero-initialises output layers; random values make the comparison meaningful."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("weight") and p.ndim == 1:       # norm scales near 1
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.05 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(np.prod(p.shape[1:])))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> pathlib.Path:
  """A tiny random SD 1.x-shaped pipeline (16x16 images, f=2, 8x8x4 latents) saved by diffusers."""
  folder = tmp_path_factory.mktemp("tiny_sd")
  tokenizer_dir = text_fixtures.write_tiny_clip_tokenizer(folder / "tokenizer_src")
  tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir)
  torch.manual_seed(0)
  text_encoder = transformers.CLIPTextModel(text_fixtures.tiny_clip_text_config(len(tokenizer)))
  unet = diffusers.UNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
      cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=4, norm_num_groups=8)
  vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                latent_channels=4, norm_num_groups=8, sample_size=16)
  for i, module in enumerate((text_encoder, unet, vae)):
    _randomize(module, i)
  scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
  pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
  pipe.save_pretrained(folder / "pipeline")
  return folder / "pipeline"


@pytest.fixture(scope="module")
def ours(sd_folder):
  return pretrained.load_diffusers(sd_folder)


def _latents(seed: int = 3) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((len(PROMPTS), 8, 8, 4)).astype(np.float32)   # NHWC


def _reference_images(folder, scheduler_config: dict, latents, **kwargs) -> np.ndarray:
  pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
  pipe.scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
  with torch.no_grad():
    out = pipe(PROMPTS, negative_prompt=["blurry"] * len(PROMPTS), num_inference_steps=NUM_STEPS,
               latents=torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()), output_type="np", **kwargs)
  return out.images                                                      # [B, H, W, 3] in [0, 1]


@pytest.mark.parametrize("scheduler_name, extra, kwargs", [
    ("DDIMScheduler", {}, {"guidance_scale": 7.5, "eta": 0.0}),
    ("PNDMScheduler", {"skip_prk_steps": True}, {"guidance_scale": 5.0}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "linspace"}, {"guidance_scale": 7.5}),
])
def test_images_match_diffusers_pipeline(sd_folder, ours, scheduler_name, extra, kwargs):
  """The folder's scheduler config with its class swapped, in diffusers and in ours."""
  latents = _latents()
  config = dict(ours.scheduler_config, _class_name=scheduler_name, **extra)
  reference = _reference_images(sd_folder, config, latents, **kwargs)
  schedule, sampler, options = scheduler_weights.from_diffusers_scheduler(config)
  model = dataclasses.replace(ours, schedule=schedule, sampler=sampler, sampler_options=options)
  images, timings = text_to_image.TextToImage(model)(PROMPTS, ["blurry"] * len(PROMPTS), num_steps=NUM_STEPS,
                                                     latents=latents, **kwargs)
  assert images.shape == reference.shape == (2, 16, 16, 3)
  # The issue asks for <= 2/255; measured ~2e-6, so hold a bound that catches real regressions.
  assert np.abs(images - reference).max() <= 1e-4
  assert timings.compile_seconds > 0 and timings.seconds_per_image > 0


def test_generator_is_compiled_once_per_shape(ours):
  pipe = text_to_image.TextToImage(ours)
  _, first = pipe(PROMPTS, num_steps=2, guidance_scale=3.0)
  _, second = pipe(["another prompt", "more"], num_steps=2, guidance_scale=9.0)   # traced scale: no recompile
  assert first.compile_seconds > 0 and second.compile_seconds == 0


def test_export_reimport_and_diffusers_load_are_lossless(sd_folder, ours, tmp_path):
  pretrained.save_diffusers(ours, tmp_path / "export")
  again = pretrained.load_diffusers(tmp_path / "export")
  for a, b in ((ours.unet_params, again.unet_params), (ours.vae_params, again.vae_params),
               (ours.text_params, again.text_params)):
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))
  original = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
  exported = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "export", local_files_only=True)
  for name in ("unet", "vae", "text_encoder"):
    reference, loaded = getattr(original, name).state_dict(), getattr(exported, name).state_dict()
    assert reference.keys() == loaded.keys(), name
    assert all(torch.equal(reference[k], loaded[k]) for k in reference), name
  assert exported.scheduler.config == original.scheduler.config


def _leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_single_file_round_trip(ours, sd_folder, tmp_path):
  path = tmp_path / "sd.safetensors"
  single_file.save_single_file(ours, path)
  keys = files.read_safetensors(path).keys()
  assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
  loaded = single_file.load_single_file(path, sd_folder / "tokenizer", image_size=16, norm_groups=8,
                                           clip_head_dim=8)
  assert loaded.unet_config["block_out_channels"] == [32, 64]
  for a, b in ((ours.unet_params, loaded.unet_params), (ours.vae_params, loaded.vae_params),
               (ours.text_params, loaded.text_params)):
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


def test_missing_weights_file_is_named(sd_folder, tmp_path):
  broken = shutil.copytree(sd_folder, tmp_path / "broken")
  (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="unet.*diffusion_pytorch_model.safetensors"):
    pretrained.load_diffusers(broken)


def test_truncated_safetensors_is_reported(sd_folder, tmp_path):
  broken = shutil.copytree(sd_folder, tmp_path / "broken")
  weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-1000])
  with pytest.raises(mapping.WeightImportError, match="truncated or corrupt"):
    pretrained.load_diffusers(broken)


def test_shape_mismatch_names_the_keys(sd_folder, tmp_path):
  broken = shutil.copytree(sd_folder, tmp_path / "broken")
  config_path = broken / "unet" / "config.json"
  config = json.loads(config_path.read_text())
  config["cross_attention_dim"] = 48
  config_path.write_text(json.dumps(config))
  with pytest.raises(mapping.WeightImportError, match=r"(?s)shape mismatches.*attn2\.to_k\.weight"):
    pretrained.load_diffusers(broken)


def test_sample_cli_writes_images_and_reports_timings(sd_folder, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "latent_diffusion.sample", f"--pretrained={sd_folder}", "--prompt=a red square",
       "--steps=3", "--guidance=7.5", f"--output={tmp_path}"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "compile" in result.stdout and "per image" in result.stdout
  assert (tmp_path / "0000.png").is_file() and (tmp_path / "grid.png").is_file()
