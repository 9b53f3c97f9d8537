"""The stage-1 evaluator (PSNR / SSIM / LPIPS per image, codebook usage, the grid) and the evaluate stage's registry."""

import jax
import numpy as np

from latent_diffusion import image_metrics
from latent_diffusion.evaluation import reconstruction
from latent_diffusion.models import VQModel
from latent_diffusion.models.lpips import LPIPS, load_lpips_params
from latent_diffusion.training import autoencoder_eval
from tests.models.conftest import _random_params as random_model_params


def test_evaluator_figures_equal_the_metrics_on_its_reconstructions(random_lpips):
  _, vgg_path, heads_path = random_lpips
  lpips_params = load_lpips_params(vgg_path, heads_path)
  model = VQModel(in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=3, groups=4,
                  num_embeddings=16)
  images = np.random.default_rng(0).uniform(-1, 1, (6, 16, 16, 3)).astype(np.float32)
  params = random_model_params(model, images[:1])["params"]      # no jitted random init: it dominates compile time
  evaluator = autoencoder_eval.Evaluator(model, True, images, lpips_params, grid_images=2, batch_size=4)
  results = evaluator(params)     # 6 images in batches of 4: the last one padded
  recon, indices = jax.jit(lambda p, x: autoencoder_eval.reconstruct(model, p, x))(params, images)
  unit = lambda a: (np.asarray(a) + 1) / 2
  np.testing.assert_allclose(results["psnr_db"], np.mean(image_metrics.psnr(unit(recon), unit(images))), rtol=1e-5)
  np.testing.assert_allclose(results["ssim"], np.mean(image_metrics.ssim(unit(recon), unit(images))), rtol=1e-5)
  np.testing.assert_allclose(results["lpips"], np.mean(LPIPS().apply({"params": lpips_params}, images, recon)),
                             rtol=1e-5)
  used = np.unique(np.asarray(indices))
  assert results["codebook_usage"] == len(used) / 16 and 1.0 <= results["perplexity"] <= len(used)
  grid = results["reconstructions"]
  assert grid.shape == (1, 32, 32, 3)
  for column in range(2):        # originals above their reconstructions, the first two images
    np.testing.assert_allclose(grid[0, :16, 16 * column:16 * (column + 1)], unit(images[column]), atol=1e-6)
    np.testing.assert_allclose(grid[0, 16:, 16 * column:16 * (column + 1)], np.clip(unit(recon[column]), 0, 1), atol=1e-6)
  assert "reconstructions" not in evaluator(params, with_grid=False)
  # The evaluate stage's 'reconstruction' network computes the same figures by name (images in [0, 1]).
  metrics = reconstruction.resolve(("psnr", "ssim", "lpips"))
  weights = {"lpips": lpips_params}
  for name, key in (("psnr", "psnr_db"), ("ssim", "ssim"), ("lpips", "lpips")):
    np.testing.assert_allclose(np.mean(metrics[name](unit(recon), unit(images), weights)), results[key], rtol=1e-5)
