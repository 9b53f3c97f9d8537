"""diffusers' 9-channel StableDiffusionInpaintPipeline folders: a tiny random one loads as text + inpaint
conditioning, our Generator inpaints what diffusers inpaints (same prompts, image, mask and initial latents), and
an export is read back by diffusers and by us unchanged; the sampling CLI inpaints from image and mask files."""

import subprocess
import sys

import diffusers
import jax
import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion import generation
from latent_diffusion.weights import pretrained
from tests import sd_pipelines

PROMPTS = ["a red square", "two cats"]
NEGATIVE = ["blurry"] * 2
NUM_STEPS = 5


@pytest.fixture(scope="module")
def inpaint_folder(tmp_path_factory):
  return sd_pipelines.write_tiny_sd(tmp_path_factory.mktemp("tiny_sd_inpaint"), inpainting=True)


def _inputs():
  rng = np.random.default_rng(7)
  image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  mask = np.zeros((2, 16, 16), np.float32)
  mask[0, 3:11, 5:14] = 1.0
  mask[1, :, 8:] = 1.0
  latents = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  return image, mask, latents


def test_inpainting_pipeline_matches_diffusers_and_round_trips(inpaint_folder, tmp_path):
  model = pretrained.load_diffusers(inpaint_folder)
  assert model.conditioning.kinds == ("text", "inpaint") and model.unet.in_channels == 9
  image, mask, latents = _inputs()
  request = {"prompt": PROMPTS, "negative_prompt": NEGATIVE, "image": image, "mask": mask}
  ours, _ = generation.Generator(model)(request, num_steps=NUM_STEPS, guidance_scale=6.0, latents=latents)
  reference = sd_pipelines.diffusers_inpainted(inpaint_folder, PROMPTS, image, mask, latents, NUM_STEPS,
                                               negative_prompt=NEGATIVE, guidance_scale=6.0)
  assert ours.shape == reference.shape == (2, 16, 16, 3)
  relative, largest = np.linalg.norm(ours - reference) / np.linalg.norm(reference), np.abs(ours - reference).max()
  print(f"inpainting pipeline vs diffusers: relative error {relative:.2e}, max abs {largest:.2e}")
  assert relative <= 1e-5 and largest <= 1e-4
  # The mask matters: a different hole gives a different image (the 5 extra channels are read).
  other = dict(request, mask=1.0 - mask)
  assert np.abs(generation.Generator(model)(other, num_steps=NUM_STEPS, guidance_scale=6.0,
                                            latents=latents)[0] - ours).mean() > 1e-3

  pretrained.save_diffusers(model, tmp_path / "export")
  again = pretrained.load_diffusers(tmp_path / "export")
  assert again.conditioning.kinds == model.conditioning.kinds
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  assert all(np.array_equal(a, b) for a, b in zip(leaves(model.params), leaves(again.params)))
  assert len(leaves(model.params)) == len(leaves(again.params))
  original = diffusers.StableDiffusionInpaintPipeline.from_pretrained(inpaint_folder, local_files_only=True)
  exported = diffusers.StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "export", local_files_only=True)
  assert type(exported).__name__ == "StableDiffusionInpaintPipeline"
  for name in ("unet", "vae", "text_encoder"):
    reference_state, loaded = getattr(original, name).state_dict(), getattr(exported, name).state_dict()
    assert reference_state.keys() == loaded.keys(), name
    assert all(torch.equal(reference_state[k], loaded[k]) for k in reference_state), name
  assert exported.unet.config.in_channels == 9 and exported.scheduler.config == original.scheduler.config
  exported_images = sd_pipelines.diffusers_inpainted(tmp_path / "export", PROMPTS, image, mask, latents, NUM_STEPS,
                                                     negative_prompt=NEGATIVE, guidance_scale=6.0)
  assert np.abs(exported_images - reference).max() <= 1e-6



def test_sample_cli_inpaints_and_refuses_a_mask_of_another_size(inpaint_folder, tmp_path, cached_compiles_env):
  image, mask, _ = _inputs()
  Image.fromarray(((image[0] + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "image.png")
  Image.fromarray((mask[0] * 255).astype(np.uint8)).save(tmp_path / "mask.png")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small_mask.png")
  command = [sys.executable, "-m", "latent_diffusion.cli.sample", f"--pretrained={inpaint_folder}", "--prompt=a cat",
             f"--image={tmp_path / 'image.png'}", "--steps=2", "--num_images=2", f"--output={tmp_path / 'out'}"]
  result = subprocess.run(command + [f"--mask={tmp_path / 'mask.png'}"], capture_output=True, text=True,
                          timeout=600, env=cached_compiles_env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert np.asarray(Image.open(tmp_path / "out" / "0001.png")).shape == (16, 16, 3)
  refused = subprocess.run(command + [f"--mask={tmp_path / 'small_mask.png'}"], capture_output=True, text=True,
                           timeout=600, env=cached_compiles_env)
  assert refused.returncode != 0
  assert "'mask' of shape (2, 8, 8) does not fit 'image' of shape (2, 16, 16, 3)" in refused.stderr
