"""Writing generated images: one PNG per image, or a grid."""

import numpy as np
from PIL import Image


def save_grid(images: np.ndarray, rows: int, path, upscale: int = 4, gap: int = 1) -> None:
  """Writes images [rows * cols, H, W, C] in [0, 1] as one PNG grid (row-major), upscaled.

  Cells are separated by `gap` mid-grey pixels (before upscaling).
  """
  images = np.pad(images, ((0, 0), (0, gap), (0, gap), (0, 0)), constant_values=0.5)
  n, h, w, c = images.shape
  cols = n // rows
  grid = images[:rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  to_pil(np.repeat(np.repeat(grid, upscale, axis=0), upscale, axis=1)).save(path)


def to_pil(image: np.ndarray) -> Image.Image:
  """[H, W, 1 or 3] in [0, 1] -> 8-bit PIL image."""
  pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
