"""Per-image reconstruction metrics by name (the 'reconstruction' network computes those configured).

Each is fn(images [B, H, W, C], originals [B, H, W, C], both in [0, 1]) -> [B], traceable by jax.jit.
SSIM and LPIPS register here when they land (models/lpips.py is built with stage 1's perceptual loss);
rFID is the fid evaluator with a 'reconstruction' source as its samples.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def psnr(images: jax.Array, originals: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB of each image (peak 1)."""
  mse = jnp.mean(jnp.square(images.astype(jnp.float32) - originals.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-12))


RECONSTRUCTION_METRICS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"psnr": psnr}


def resolve(names) -> dict[str, Callable]:
  unknown = [n for n in names if n not in RECONSTRUCTION_METRICS]
  if unknown:
    raise ValueError(f"Unknown reconstruction metric(s) {unknown} (config.evaluate.reconstruction.metrics); "
                     f"known: {sorted(RECONSTRUCTION_METRICS)}.")
  return {name: RECONSTRUCTION_METRICS[name] for name in names}
