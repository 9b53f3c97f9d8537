"""End to end against diffusers: a tiny random StableDiffusionPipeline saved to disk, loaded by our
bundle, gives the same images through our one Generator; export / re-import / diffusers from_pretrained are
lossless (every config key kept); an SD 2.x-like pipeline (v-prediction, zero terminal SNR, upcast attention);
single-file (original layout) round trip; clear errors for broken folders; the sampling CLI."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import diffusers
import jax
import numpy as np
import pytest
import torch

from latent_diffusion import generation
from latent_diffusion.weights import files, mapping, pretrained, single_file
from latent_diffusion.weights import scheduler as scheduler_weights
from tests import sd_pipelines

PROMPTS = ["a red square", "two cats"]
NUM_STEPS = 6


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> pathlib.Path:
  return sd_pipelines.write_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def ours(sd_folder):
  return pretrained.load_diffusers(sd_folder)


def _latents(seed: int = 3) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((len(PROMPTS), 8, 8, 4)).astype(np.float32)   # NHWC


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _same_params(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b))) and len(_leaves(a)) == len(_leaves(b))


@pytest.mark.parametrize("scheduler_name, extra, kwargs", [
    ("DDIMScheduler", {}, {"guidance_scale": 7.5, "eta": 0.0}),
    ("PNDMScheduler", {"skip_prk_steps": True}, {"guidance_scale": 5.0}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "linspace"}, {"guidance_scale": 7.5}),
])
def test_images_match_diffusers_pipeline(sd_folder, ours, scheduler_name, extra, kwargs):
  """The folder's scheduler config with its class swapped, in diffusers and in ours."""
  latents = _latents()
  config = dict(ours.source_configs["scheduler"], _class_name=scheduler_name, **extra)
  reference = sd_pipelines.diffusers_images(sd_folder, PROMPTS, latents, NUM_STEPS, config,
                                            negative_prompt=["blurry"] * len(PROMPTS), **kwargs)
  schedule, sampler, options = scheduler_weights.from_diffusers_scheduler(config)
  model = dataclasses.replace(ours, schedule=schedule, sampler=sampler, sampler_options=options)
  request = {"prompt": PROMPTS, "negative_prompt": ["blurry"] * len(PROMPTS)}
  images, timings = generation.Generator(model)(request, num_steps=NUM_STEPS, latents=latents, **kwargs)
  assert images.shape == reference.shape == (2, 16, 16, 3)
  # The issue asks for <= 2/255; measured ~2e-6, so hold a bound that catches real regressions.
  assert np.abs(images - reference).max() <= 1e-4
  assert timings.compile_seconds > 0 and timings.seconds_per_image > 0


def test_generator_is_compiled_once_per_shape(ours):
  generator = generation.Generator(ours)
  _, first = generator({"prompt": PROMPTS}, num_steps=2, guidance_scale=3.0)
  _, second = generator({"prompt": ["another prompt", "more"]}, num_steps=2, guidance_scale=9.0)  # traced scale
  assert first.compile_seconds > 0 and second.compile_seconds == 0


def test_sampler_options_are_uniform(ours):
  generator = generation.Generator(ours)
  with pytest.raises(ValueError, match=r"Sampler 'plms' takes no option \['eta'\]"):
    generator({"prompt": PROMPTS}, num_steps=2, sampler="plms", eta=0.5)
  with pytest.raises(ValueError, match="Say how many images"):
    generator({"prompt": "one string"}, num_steps=2)
  one, _ = generator({"prompt": "one string"}, num_images=2, num_steps=2, latents=_latents())
  two, _ = generator({"prompt": ["one string"] * 2}, num_steps=2, latents=_latents())
  np.testing.assert_array_equal(one, two)


def test_export_reimport_and_diffusers_load_are_lossless(sd_folder, ours, tmp_path):
  pretrained.save_diffusers(ours, tmp_path / "export")
  again = pretrained.load_diffusers(tmp_path / "export")
  assert _same_params(ours.params, again.params)
  original = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
  exported = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "export", local_files_only=True)
  for name in ("unet", "vae", "text_encoder"):
    reference, loaded = getattr(original, name).state_dict(), getattr(exported, name).state_dict()
    assert reference.keys() == loaded.keys(), name
    assert all(torch.equal(reference[k], loaded[k]) for k in reference), name
  assert exported.scheduler.config == original.scheduler.config


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory) -> pathlib.Path:
  return sd_pipelines.write_tiny_sd(tmp_path_factory.mktemp("tiny_sd2"), sd2=True)


def test_sd2_like_pipeline_round_trip(sd2_folder, tmp_path):
  """v-prediction with zero-terminal-SNR betas (trailing DDIM), upcast attention, non-default CLIP token ids:
  our samples equal diffusers', an export keeps every config field, diffusers samples the export the same."""
  model = pretrained.load_diffusers(sd2_folder)
  latents = _latents()
  reference = sd_pipelines.diffusers_images(sd2_folder, PROMPTS, latents, NUM_STEPS, negative_prompt=["ok"] * 2,
                                            guidance_scale=5.0)
  images, _ = generation.Generator(model)({"prompt": PROMPTS, "negative_prompt": "ok"}, num_steps=NUM_STEPS,
                                          guidance_scale=5.0, latents=latents)
  assert np.abs(images - reference).max() <= 1e-4
  pretrained.save_diffusers(model, tmp_path / "export")
  for part, keys in (("unet", ("upcast_attention", "use_linear_projection", "attention_head_dim")),
                     ("text_encoder", ("bos_token_id", "pad_token_id", "projection_dim", "eos_token_id"))):
    source = json.loads((sd2_folder / part / "config.json").read_text())
    exported = json.loads((tmp_path / "export" / part / "config.json").read_text())
    assert {k: exported[k] for k in keys} == {k: source[k] for k in keys}, part
  exported_scheduler = json.loads((tmp_path / "export" / "scheduler" / "scheduler_config.json").read_text())
  assert exported_scheduler["rescale_betas_zero_snr"] is True
  again = sd_pipelines.diffusers_images(tmp_path / "export", PROMPTS, latents, NUM_STEPS,
                                        negative_prompt=["ok"] * 2, guidance_scale=5.0)
  assert np.abs(again - reference).max() <= 1e-6


def test_single_file_round_trip(ours, sd_folder, tmp_path):
  path = tmp_path / "sd.safetensors"
  single_file.save_single_file(ours, path)
  keys = files.read_safetensors(path).keys()
  assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
  loaded = single_file.load_single_file(path, sd_folder / "tokenizer", image_size=16, norm_groups=8,
                                           clip_head_dim=8)
  assert loaded.source_configs["unet"]["block_out_channels"] == [32, 64]
  assert _same_params(ours.params, loaded.params)


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
      [sys.executable, "-m", "latent_diffusion.cli.sample", f"--pretrained={sd_folder}", "--prompt=a red square",
       "--steps=3", "--guidance=7.5", f"--output={tmp_path}"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "compile" in result.stdout and "per image" in result.stdout
  assert (tmp_path / "0000.png").is_file() and (tmp_path / "grid.png").is_file()
