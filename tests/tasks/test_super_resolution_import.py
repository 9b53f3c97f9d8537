"""diffusers' LDMSuperResolutionPipeline (UNet2DModel with 6 input channels + a VQ f=4 decoder) imported as one of
our bundles: a tiny random pipeline written by diffusers samples the same pixels in diffusers and in our Generator
from the same initial latents, and a low-resolution image of the wrong size is refused with both shapes named; the
same networks in residual mode add the bicubic upsampling to each sample."""

import dataclasses

import diffusers
import numpy as np
import pytest
import torch

from latent_diffusion import conditioning, generation
from latent_diffusion.data import degradations
from latent_diffusion.weights import super_resolution
from tests import sd_pipelines

LOW = 8        # low-resolution side = latent side; the output is 4x larger


@pytest.fixture(scope="module")
def sr_folder(tmp_path_factory):
  vqvae = diffusers.VQModel(in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            latent_channels=3, num_vq_embeddings=64, norm_num_groups=8, sample_size=32)
  unet = diffusers.UNet2DModel(sample_size=LOW, in_channels=6, out_channels=3, block_out_channels=(32, 64),
                               layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                               up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
  for i, module in enumerate((vqvae, unet)):
    sd_pipelines.randomize(module, i)
  scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155,
                                      clip_sample=False, set_alpha_to_one=True)
  folder = tmp_path_factory.mktemp("ldm_sr") / "pipeline"
  diffusers.LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(folder)
  return folder


def test_ldm_super_resolution_pixels_match_diffusers(sr_folder):
  low = np.random.default_rng(0).uniform(-1, 1, (2, LOW, LOW, 3)).astype(np.float32)
  pipe = diffusers.LDMSuperResolutionPipeline.from_pretrained(sr_folder, local_files_only=True)
  with torch.no_grad():
    theirs = pipe(image=torch.from_numpy(low.transpose(0, 3, 1, 2).copy()), num_inference_steps=5, eta=0.0,
                  generator=torch.Generator().manual_seed(3), output_type="np").images
  # The pipeline's initial latents: randn_tensor on the CPU is torch.randn with the same generator.
  latents = torch.randn((2, 3, LOW, LOW), generator=torch.Generator().manual_seed(3)).numpy().transpose(0, 2, 3, 1)
  model = super_resolution.load_ldm_super_resolution(sr_folder)
  assert model.scale_factor == 1.0 and model.conditioning.kinds == ("low_res",) and not model.conditioning.guided
  ours, _ = generation.Generator(model)({"low_res": low}, num_steps=5, latents=latents)
  assert ours.shape == theirs.shape == (2, 4 * LOW, 4 * LOW, 3)
  difference = np.abs(ours - theirs).max()
  print(f"LDM-SR vs diffusers: max abs pixel difference {difference:.2e}")
  assert difference <= 1e-4
  # Any size: a 12 x 16 low-resolution image gives 48 x 64 pixels (no height / width needed).
  wide, _ = generation.Generator(model)({"low_res": np.zeros((1, 12, 16, 3), np.float32)}, num_steps=2)
  assert wide.shape == (1, 48, 64, 3)


def test_low_res_of_the_wrong_size_is_refused_with_both_shapes(sr_folder):
  generator = generation.Generator(super_resolution.load_ldm_super_resolution(sr_folder))
  with pytest.raises(ValueError, match=r"\{'low_res': \(1, 8, 8, 3\)\} fit the latent grid \(8, 8\) \(32 x 32 "
                                       r"pixels\); the requested size height=64, width=64"):
    generator({"low_res": np.zeros((1, 8, 8, 3), np.float32)}, height=64, width=64, num_steps=2)
  with pytest.raises(ValueError, match=r"condition 'low_res' has shape \(1, 8, 8, 4\); the model takes "
                                       r"\[\.\.\., h, w, 3\]"):
    generator({"low_res": np.zeros((1, 8, 8, 4), np.float32)}, num_steps=2)


def test_residual_mode_adds_the_bicubic_upsampling_to_the_decoded_sample(sr_folder):
  """The same networks as a residual super-resolution model: each sample is the plain model's decoded output plus
  bicubic_up(low_res) (pixels in [0, 1]: half of it), compared where neither output is clipped."""
  model = super_resolution.load_ldm_super_resolution(sr_folder)
  residual = dataclasses.replace(model, conditioning=conditioning.Conditioning(
      [conditioning.LowResConditioner(3, residual=True, factor=4)]))
  low = np.random.default_rng(5).uniform(-0.3, 0.3, (2, LOW, LOW, 3)).astype(np.float32)
  latents = np.random.default_rng(6).standard_normal((2, LOW, LOW, 3)).astype(np.float32)
  plain, _ = generation.Generator(model)({"low_res": low}, num_steps=2, latents=latents)
  ours, _ = generation.Generator(residual)({"low_res": low}, num_steps=2, latents=latents)
  expected = plain + np.stack([degradations.bicubic_upsample(x, 4) for x in low]) / 2.0
  inside = (plain > 0.01) & (plain < 0.99) & (expected > 0.01) & (expected < 0.99)
  assert inside.mean() > 0.5
  np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-5)
