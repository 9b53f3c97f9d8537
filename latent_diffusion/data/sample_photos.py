"""Real photographs shipped with scikit-image and scikit-learn, as stage-1 training crops and validation tiles.

Nothing is downloaded: the photos are files inside the two packages (RGB, 300 to 1411 pixels a side).
Splits are by photo (data.sample_photos.train / val), so validation images come from photos the model
never saw. Training examples are random H x W crops (data.image_shape) at the photos' own resolution (no
resizing: the textures and edges of real photos), data.sample_photos.crops_per_photo per photo and epoch,
flipped left-right with probability 1/2 if data.flip; validation examples are the non-overlapping H x W
tiles of the validation photos, in raster order. Examples: {'image': float32 [H, W, 3] in [-1, 1]}.
"""

import functools

import grain
import numpy as np


def _skimage(name: str):
  def load() -> np.ndarray:
    try:
      import skimage.data  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"Photo {name!r} ships with scikit-image: pip install scikit-image "
                        "(requirements.txt).") from None
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
    raise ValueError(f"Unknown sample photo(s) {unknown} (config.data.sample_photos); known: "
                     f"{sorted(PHOTOS)}.")
  if not names:
    raise ValueError("No photos named for this split (config.data.sample_photos).")
  return tuple(np.ascontiguousarray(PHOTOS[name]()) for name in names)


class RandomCrop(grain.transforms.RandomMap):
  """Index i -> a random height x width crop of photo i % len(photos), mirrored w.p. 1/2 if flip."""

  def __init__(self, photos: tuple[np.ndarray, ...], shape: tuple[int, int], flip: bool):
    small = [p.shape[:2] for p in photos if p.shape[0] < shape[0] or p.shape[1] < shape[1]]
    if small:
      raise ValueError(f"Photos of {small} pixels are smaller than the {shape[0]}x{shape[1]} crops "
                       "(config.data.image_size / image_width).")
    self.photos, self.shape, self.flip = photos, shape, flip

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    photo = self.photos[int(index) % len(self.photos)]
    (height, width) = self.shape
    top = int(rng.integers(photo.shape[0] - height + 1))
    left = int(rng.integers(photo.shape[1] - width + 1))
    pixels = photo[top:top + height, left:left + width]
    if self.flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return {"image": pixels.astype(np.float32) / 127.5 - 1.0}


def tiles(photos: tuple[np.ndarray, ...], shape: tuple[int, int]) -> np.ndarray:
  """The non-overlapping height x width tiles of every photo, raster order: float32 [N, H, W, 3] in [-1, 1]."""
  (h, w) = shape
  out = [photo[top:top + h, left:left + w] for photo in photos
         for top in range(0, photo.shape[0] - h + 1, h) for left in range(0, photo.shape[1] - w + 1, w)]
  return np.stack(out).astype(np.float32) / 127.5 - 1.0


def make_sample_photos_dataset(data_config, split: str) -> grain.MapDataset:
  """Training crops ('train') or validation tiles ('val') of the configured photos."""
  from latent_diffusion.data import from_arrays, image_shape  # pylint: disable=import-outside-toplevel

  options, shape = data_config.sample_photos, image_shape(data_config)
  if split == "val":
    return from_arrays({"image": tiles(load_photos(tuple(options.val)), shape)})
  if split != "train":
    raise ValueError(f"Unknown split {split!r}; expected 'train' or 'val'.")
  photos = load_photos(tuple(options.train))
  crops = grain.MapDataset.range(len(photos) * options.crops_per_photo)
  return crops.random_map(RandomCrop(photos, shape, data_config.flip), seed=data_config.seed)
