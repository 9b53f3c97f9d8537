"""Real photographs shipped with scikit-image and scikit-learn, as stage-1 training crops and validation tiles.

Nothing is downloaded: the photos are files inside the two packages (RGB, 300 to 1411 pixels a side).
Splits are by photo (data.train_photos / data.val_photos), so validation images come from photos the
model never saw. Training examples are random image_size crops at the photos' own resolution (no
resizing: the textures and edges of real photos), data.crops_per_photo per photo and epoch, flipped
left-right with probability 1/2 if data.flip; validation examples are the non-overlapping image_size
tiles of the validation photos, in raster order. Examples: {'image': float32 [S, S, 3] in [-1, 1]}.
"""

import functools

import grain
import numpy as np


def _skimage(name: str):
  def load() -> np.ndarray:
    try:
      import skimage.data  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"Photo {name!r} ships with scikit-image: pip install scikit-image (requirements.txt).") from None
    return getattr(skimage.data, name)()
  return load


def _motorcycle(view: int):
  return lambda: _skimage("stereo_motorcycle")()[view]


def _sklearn(index: int):
  def load() -> np.ndarray:
    from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
    return load_sample_images().images[index]
  return load


# Photo name -> loader of uint8 [H, W, 3]. The two motorcycle views are one scene: keep them in one split.
PHOTOS = {
    "astronaut": _skimage("astronaut"), "chelsea": _skimage("chelsea"), "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"), "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"), "retina": _skimage("retina"),
    "motorcycle_left": _motorcycle(0), "motorcycle_right": _motorcycle(1),
    "china": _sklearn(0), "flower": _sklearn(1),
}


@functools.lru_cache(maxsize=8)
def load_photos(names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
  """The named photos, uint8 [H, W, 3] each."""
  unknown = [name for name in names if name not in PHOTOS]
  if unknown:
    raise ValueError(f"Unknown sample photo(s) {unknown} (config.data.train_photos / val_photos); known: "
                     f"{sorted(PHOTOS)}.")
  if not names:
    raise ValueError("No photos named for this split (config.data.train_photos / val_photos).")
  return tuple(np.ascontiguousarray(PHOTOS[name]()) for name in names)


class RandomCrop(grain.transforms.RandomMap):
  """Index i -> a random size x size crop of photo i % len(photos), mirrored w.p. 1/2 if flip."""

  def __init__(self, photos: tuple[np.ndarray, ...], size: int, flip: bool):
    small = [p.shape[:2] for p in photos if min(p.shape[:2]) < size]
    if small:
      raise ValueError(f"Photos of {small} pixels are smaller than the {size}x{size} crops (config.data.image_size).")
    self.photos, self.size, self.flip = photos, size, flip

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    photo = self.photos[int(index) % len(self.photos)]
    top = int(rng.integers(photo.shape[0] - self.size + 1))
    left = int(rng.integers(photo.shape[1] - self.size + 1))
    pixels = photo[top:top + self.size, left:left + self.size]
    if self.flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return {"image": pixels.astype(np.float32) / 127.5 - 1.0}


def tiles(photos: tuple[np.ndarray, ...], size: int) -> np.ndarray:
  """The non-overlapping size x size tiles of every photo, raster order: float32 [N, size, size, 3] in [-1, 1]."""
  out = [photo[top:top + size, left:left + size] for photo in photos
         for top in range(0, photo.shape[0] - size + 1, size) for left in range(0, photo.shape[1] - size + 1, size)]
  return np.stack(out).astype(np.float32) / 127.5 - 1.0


def make_sample_photos_dataset(data_config, split: str) -> grain.MapDataset:
  """Training crops ('train') or validation tiles ('val') of the configured photos."""
  from latent_diffusion.data import from_arrays  # pylint: disable=import-outside-toplevel

  if split == "val":
    return from_arrays({"image": tiles(load_photos(tuple(data_config.val_photos)), data_config.image_size)})
  if split != "train":
    raise ValueError(f"Unknown split {split!r}; expected 'train' or 'val'.")
  photos = load_photos(tuple(data_config.train_photos))
  crop = RandomCrop(photos, data_config.image_size, data_config.flip)
  return grain.MapDataset.range(len(photos) * data_config.crops_per_photo).random_map(crop, seed=data_config.seed)
