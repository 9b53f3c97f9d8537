"""How images reach InceptionV3's 299 x 299 input: the three conventions in use, each reproduced exactly.

FID figures are only comparable under the same resize, and the tools differ (Parmar et al., "On Aliased
Resizing and Surprising Subtleties in GAN Evaluation", 2022):

  'pytorch_fid'     pytorch-fid: [0, 1] floats, torch bilinear with half-pixel centres and no antialiasing
                    (F.interpolate(align_corners=False)), then 2x - 1.
  'torch_fidelity'  torch-fidelity and the original TensorFlow FID / IS code: [0, 255] floats, TensorFlow 1.x
                    bilinear (source = destination * scale: no half-pixel offset, no antialiasing), then
                    (x - 128) / 128.
  'clean_fid'       clean-fid's 'clean' mode: [0, 255] floats, PIL bicubic in float ('F') mode, which widens
                    its kernel when shrinking (antialiased), clipped to [0, 255], then (x - 128) / 128.

All three start from 8-bit images (files or uint8 tensors); `to_inception_input` quantizes [0, 1] floats to
8-bit levels first (`quantize=True`) so that figures match ones computed from saved PNGs. Downsampling
without antialiasing (the two bilinear conventions) aliases: clean-fid's is the only one that treats
large images fairly; for images smaller than 299 (upsampling) the three differ only slightly.

Each resize is a fixed [out, in] matrix per axis (built in NumPy from the tool's formula), applied as two
matmuls inside the compiled feature function.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_SIZE = 299


def _two_tap_matrix(in_size: int, out_size: int, half_pixel: bool) -> np.ndarray:
  """Bilinear weights [out, in]: torch's align_corners=False (half_pixel) or TensorFlow 1.x's (not)."""
  # Source coordinates in float32 arithmetic, as both tools compute them (their rounding is part of the result).
  scale, dst = np.float32(in_size / out_size), np.arange(out_size, dtype=np.float32)
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0)) if half_pixel else dst * scale
  lo = np.minimum(np.floor(src).astype(int), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float64)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(matrix, (np.arange(out_size), hi), frac)
  return matrix


def _pil_bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _pil_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """PIL's bicubic resampling weights [out, in] (libImaging/Resample.c precompute_coeffs, double precision)."""
  scale = in_size / out_size
  filter_scale = max(scale, 1.0)
  support = 2.0 * filter_scale
  matrix = np.zeros((out_size, in_size))
  for out in range(out_size):
    center = (out + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)          # C casts truncate towards zero
    hi = min(int(center + support + 0.5), in_size)
    weights = _pil_bicubic((np.arange(lo, hi) - center + 0.5) / filter_scale)
    total = weights.sum()
    matrix[out, lo:hi] = weights / total if total != 0 else weights
  return matrix


@functools.lru_cache(maxsize=32)
def resize_matrix(kind: str, in_size: int, out_size: int) -> np.ndarray:
  """[out, in] float32 weights of one axis for kind 'torch_bilinear', 'tf1_bilinear' or 'pil_bicubic'."""
  builders = {"torch_bilinear": lambda: _two_tap_matrix(in_size, out_size, half_pixel=True),
              "tf1_bilinear": lambda: _two_tap_matrix(in_size, out_size, half_pixel=False),
              "pil_bicubic": lambda: _pil_bicubic_matrix(in_size, out_size)}
  return builders[kind]().astype(np.float32)


def resize(images: jax.Array, size: tuple[int, int], kind: str) -> jax.Array:
  """images [B, H, W, C] -> [B, size[0], size[1], C] with the separable weights of `kind` (rows, then columns)."""
  rows = resize_matrix(kind, images.shape[1], size[0])
  cols = resize_matrix(kind, images.shape[2], size[1])
  hp = jax.lax.Precision.HIGHEST
  images = jnp.einsum("oh,bhwc->bowc", rows, images, precision=hp)
  return jnp.einsum("pw,bowc->bopc", cols, images, precision=hp)


# Convention name -> (resize kind, input range max (1 or 255), clip after resizing, (offset, scale) to [-1, 1]).
CONVENTIONS = {
    "pytorch_fid": ("torch_bilinear", 1.0, False, (0.5, 2.0)),
    "torch_fidelity": ("tf1_bilinear", 255.0, False, (128.0, 1.0 / 128.0)),
    "clean_fid": ("pil_bicubic", 255.0, True, (128.0, 1.0 / 128.0)),
}


def to_inception_input(images: jax.Array, convention: str, quantize: bool = True,
                       size: int = INCEPTION_SIZE) -> jax.Array:
  """images [B, H, W, 1 or 3] in [0, 1] -> [B, size, size, 3], resized and scaled as `convention` does."""
  if convention not in CONVENTIONS:
    raise ValueError(f"Unknown resize convention {convention!r}; known: {sorted(CONVENTIONS)}.")
  kind, peak, clip, (offset, scale) = CONVENTIONS[convention]
  images = jnp.clip(images.astype(jnp.float32), 0.0, 1.0)
  if quantize:
    images = jnp.floor(images * 255.0 + 0.5) / 255.0
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  x = images * peak
  if x.shape[1:3] != (size, size):
    x = resize(x, (size, size), kind)
  if clip:
    x = jnp.clip(x, 0.0, peak)
  return (x - offset) * scale
