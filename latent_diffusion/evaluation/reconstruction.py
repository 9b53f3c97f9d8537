"""Per-image reconstruction metrics by name (the 'reconstruction' network computes those configured).

Each is fn(images [B, H, W, C], originals [B, H, W, C], both in [0, 1], weights) -> [B], traceable by jax.jit;
`weights` holds what WEIGHTS loads for the configured metrics (LPIPS: config.autoencoder.lpips files).
PSNR and SSIM (as skimage's structural_similarity) are latent_diffusion.image_metrics; rFID is the fid
evaluator with a 'reconstruction' source as its samples.
"""

from collections.abc import Callable

import jax

from latent_diffusion import image_metrics
from latent_diffusion.models.lpips import LPIPS, load_lpips_params


def lpips(images: jax.Array, originals: jax.Array, weights: dict) -> jax.Array:
  """LPIPS v0.1 (VGG16) distance of each image to its original (inputs in [0, 1], as LPIPS's normalize=True)."""
  return LPIPS().apply({"params": weights["lpips"]}, images * 2.0 - 1.0, originals * 2.0 - 1.0)


RECONSTRUCTION_METRICS: dict[str, Callable[[jax.Array, jax.Array, dict], jax.Array]] = {
    "psnr": lambda images, originals, weights: image_metrics.psnr(images, originals),
    "ssim": lambda images, originals, weights: image_metrics.ssim(images, originals),
    "lpips": lpips,
}
# Metric name -> fn(config) -> {name: weights} it needs (loaded once, before the evaluation runs).
WEIGHTS: dict[str, Callable] = {
    "lpips": lambda config: {"lpips": load_lpips_params(config.autoencoder.lpips.vgg_path,
                                                        config.autoencoder.lpips.heads_path)},
}


def resolve(names) -> dict[str, Callable]:
  unknown = [n for n in names if n not in RECONSTRUCTION_METRICS]
  if unknown:
    raise ValueError(f"Unknown reconstruction metric(s) {unknown} (config.evaluate.reconstruction.metrics); "
                     f"known: {sorted(RECONSTRUCTION_METRICS)}.")
  return {name: RECONSTRUCTION_METRICS[name] for name in names}


def load_weights(config, names) -> dict:
  """The weights the metrics `names` need (a missing LPIPS file is an error naming it)."""
  weights = {}
  for name in names:
    if name in WEIGHTS:
      weights.update(WEIGHTS[name](config))
  return weights
