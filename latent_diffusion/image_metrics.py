"""Full-reference image quality, per image: PSNR and SSIM (pure jax.numpy, jit-able, NHWC).

SSIM follows skimage.metrics.structural_similarity with its defaults (Wang et al. 2004 constants K1=0.01,
K2=0.03; a 7x7 uniform window with sample covariances) or, with gaussian_weights=True, the paper's 11x11
Gaussian window (sigma 1.5, population covariances, as skimage with gaussian_weights=True,
use_sample_covariance=False, sigma=1.5). The SSIM map is averaged over the positions where the window
fits inside the image (skimage crops (win_size - 1) / 2 pixels at each border), then over channels.
"""

import jax
import jax.numpy as jnp
import numpy as np


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
  """[B] PSNR in dB of images [B, H, W, C] with values spanning data_range (inf for identical images)."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def _window(gaussian_weights: bool) -> np.ndarray:
  """The normalised 2-D averaging window: 7x7 uniform, or 11x11 Gaussian of sigma 1.5 (truncated at 3.5 sigma
  as scipy.ndimage.gaussian_filter with skimage's truncate=3.5)."""
  if not gaussian_weights:
    return np.full((7, 7), 1.0 / 49.0)
  offsets = np.arange(11) - 5.0
  g = np.exp(-0.5 * (offsets / 1.5) ** 2)
  g /= g.sum()
  return np.outer(g, g)


def _filter(images: jax.Array, window: np.ndarray) -> jax.Array:
  """Each channel of [B, H, W, C] averaged over the window at every position where it fits ('VALID')."""
  channels = images.shape[-1]
  kernel = jnp.asarray(np.tile(window[:, :, None, None], (1, 1, 1, channels)), jnp.float32)
  return jax.lax.conv_general_dilated(images, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, gaussian_weights: bool = False) -> jax.Array:
  """[B] mean SSIM of images [B, H, W, C] (values spanning data_range); sides must be >= the window (7 or 11)."""
  window = _window(gaussian_weights)
  if min(x.shape[1:3]) < window.shape[0]:
    raise ValueError(f"SSIM needs images of at least {window.shape[0]}x{window.shape[0]} pixels; got {x.shape[1:3]}.")
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  # skimage's use_sample_covariance=True (uniform window) rescales the variances by NP / (NP - 1).
  cov_norm = 1.0 if gaussian_weights else window.size / (window.size - 1.0)
  mean = lambda a: _filter(a, window)
  ux, uy = mean(x), mean(y)
  vx = cov_norm * (mean(x * x) - ux * ux)
  vy = cov_norm * (mean(y * y) - uy * uy)
  vxy = cov_norm * (mean(x * y) - ux * uy)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))
