"""Random crops of real photographs that ship with scikit-image and scikit-learn (no download): the
super-resolution task's data, with whole photographs held out for validation.

Example i of a split: a photo of the split chosen at random, shrunk by a random factor in [1, max_shrink]
(area resampling, so crops hold more than smooth patches), a random S x S crop, flipped at random; all drawn
from a generator seeded by (seed, split, i).
"""

import functools

import grain
import numpy as np
from PIL import Image

SPLITS = ("train", "val")
# Photographs by split: the validation photos are other scenes (a cat, flowers), never seen in training.
PHOTOS = {
    "train": ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "china",
              "colorwheel"),
    "val": ("chelsea", "flower"),
}


@functools.lru_cache(maxsize=16)
def photo(name: str) -> np.ndarray:
  """uint8 [H, W, 3] of a photo bundled with scikit-image (skimage.data.<name>) or scikit-learn (china, flower)."""
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[("china", "flower").index(name)]
  import skimage.data

  return np.asarray(getattr(skimage.data, name)())[..., :3]


class _Crop(grain.transforms.Map):
  def __init__(self, names: tuple[str, ...], side: int, max_shrink: float, seed: int, split: str):
    self.names, self.side, self.max_shrink = names, side, max_shrink
    self.seed, self.split_index = seed, SPLITS.index(split)

  def map(self, index: int) -> dict:
    rng = np.random.default_rng((self.seed, self.split_index, int(index)))
    source = photo(self.names[int(rng.integers(len(self.names)))])
    height, width = source.shape[:2]
    shrink = min(float(rng.uniform(1.0, self.max_shrink)), min(height, width) / self.side)
    size = (max(self.side, round(width / shrink)), max(self.side, round(height / shrink)))
    shrunk = np.asarray(Image.fromarray(source).resize(size, Image.Resampling.BOX))
    top, left = int(rng.integers(size[1] - self.side + 1)), int(rng.integers(size[0] - self.side + 1))
    crop = shrunk[top:top + self.side, left:left + self.side]
    if rng.random() < 0.5:
      crop = crop[:, ::-1]
    return {"image": crop.astype(np.float32) / 127.5 - 1.0}


def make_photo_crops_dataset(data_config, split: str) -> grain.MapDataset:
  """Examples {'image': float32 [S, S, 3] in [-1, 1]}: config.data.photo_crops.examples crops of the training photos
  for 'train', val_examples crops of the held-out photos for 'val'."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  options = data_config.photo_crops
  count = options.examples if split == "train" else data_config.val_examples
  crop = _Crop(PHOTOS[split], data_config.image_size, options.max_shrink, options.seed, split)
  return grain.MapDataset.range(count).map(crop)
