"""scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes) as a grain pipeline.

The images ship inside scikit-learn, so the quickstart needs no download. They are upsampled
bilinearly to `image_size` and mapped to [-1, 1]; the split is stratified and fixed.
"""

import functools

import grain
import numpy as np
from PIL import Image

SPLITS = ("train", "val")


@functools.lru_cache(maxsize=4)
def load_digits_split(split: str, image_size: int, val_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images float32 [N, S, S, 1] in [-1, 1], labels int32 [N]) of one split."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  digits = load_digits()
  pixels = digits.images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
  train_idx, val_idx = train_test_split(
      np.arange(len(pixels)), test_size=val_examples, stratify=digits.target, random_state=0)
  idx = np.sort(train_idx if split == "train" else val_idx)
  images = np.stack([_resize(p, image_size) for p in pixels[idx]])[..., None]
  return images * 2.0 - 1.0, digits.target[idx].astype(np.int32)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of one [h, w] image in [0, 1] to [size, size]."""
  resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
  return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def make_digits_dataset(data_config, split: str) -> grain.MapDataset:
  """Examples {'image': [S, S, 1] float32 in [-1, 1], 'label': int32 in [0, 10)}."""
  from latent_diffusion.data import from_arrays

  images, labels = load_digits_split(split, data_config.image_size, data_config.val_examples)
  return from_arrays({"image": images, "label": labels})
