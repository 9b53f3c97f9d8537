"""Image records -> training examples: decode, filter, resize, crop, flip, normalise (grain transforms).

Records come from a source (tar shards, class folders) as {'key', 'image_bytes', 'caption',
'metadata', optionally 'label'}; `image_dataset` turns them into {'image': float32 [S, S, 3] in
[-1, 1], 'label'?, 'tokens'?, 'caption'?, 'key'?}.

Skipping, not crashing: a record that cannot be decoded or fails a size filter becomes None in
`DecodeImage` and is dropped by the `.filter` that ends the pipeline; the reason and key go to a
`SkipCounter`. Counting is per process (the counter travels with the pickled pipeline, so each
mp_prefetch worker counts its own records and logs them); with thread prefetch, as in the training
loop, one counter sees every record. The index-time skips of a source (no image member, truncated
shard) are added to the same counter when the pipeline is built.
"""

import io
import math
import threading
from collections.abc import Callable, Sequence

import grain
import numpy as np
from absl import logging
from PIL import Image, ImageOps

CROPS = ("center", "random")


class SkipCounter:
  """Thread-safe, picklable tally of skipped records: {reason: set of keys}.

  Keys make counts idempotent: a corrupt record met again in a later epoch is counted once.
  """

  def __init__(self, name: str = "images"):
    self.name = name
    self._keys: dict[str, set[str]] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    with self._lock:
      return {"name": self.name, "_keys": {r: set(k) for r, k in self._keys.items()}}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def skip(self, reason: str, key: str, detail: str = "") -> None:
    """Records that the record `key` was dropped for `reason` (a short identifier)."""
    with self._lock:
      self._keys.setdefault(reason, set()).add(key)
    logging.log_every_n_seconds(logging.WARNING, "%s: skipped %s (%s%s); totals so far %s", 30, self.name,
                                key, reason, f": {detail}" if detail else "", self.counts())

  def add(self, skipped: dict[str, Sequence[str]]) -> None:
    """Adds {reason: [key]} found elsewhere (e.g. while indexing a source)."""
    with self._lock:
      for reason, keys in skipped.items():
        self._keys.setdefault(reason, set()).update(keys)

  def counts(self) -> dict[str, int]:
    """{reason: number of distinct records skipped for it}."""
    with self._lock:
      return {reason: len(keys) for reason, keys in sorted(self._keys.items())}

  def keys(self, reason: str) -> set[str]:
    with self._lock:
      return set(self._keys.get(reason, ()))


def _to_rgb(image: Image.Image) -> Image.Image:
  """RGB for any Pillow mode: transparency over white, 16-bit grey scaled to 8 bits, CMYK via Pillow."""
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode.startswith("I"):  # 16/32-bit integer grey (e.g. 16-bit PNG)
    grey = np.asarray(image, dtype=np.float64) / 257.0
    image = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8))
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image.convert("RGBA"))
  return image.convert("RGB")


def open_image(data: bytes) -> Image.Image:
  """Pillow image of encoded bytes; reads only the header (pixels are decoded lazily)."""
  return Image.open(io.BytesIO(data))


def decode_image(image: Image.Image, draft_size: int | None = None) -> np.ndarray:
  """uint8 [H, W, 3] pixels of an opened image, EXIF orientation applied.

  draft_size: a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose shorter side stays
  >= draft_size (libjpeg's DCT scaling: several times faster for large photos).
  """
  if draft_size is not None and image.format == "JPEG":
    image.draft("RGB", (draft_size, draft_size))
  image = ImageOps.exif_transpose(image)
  image.load()
  return np.asarray(_to_rgb(image))


class DecodeImage(grain.transforms.Map):
  """{'image_bytes', ...} -> {'pixels': uint8 [H, W, 3], ...} without 'image_bytes', or None (skipped).

  Skip reasons: 'undecodable' (any error from Pillow, e.g. garbage or truncated data),
  'too_small' (shorter side < min_size), 'aspect_ratio' (longer / shorter side > max_aspect_ratio).
  The size filters read only the image header.
  """

  def __init__(self, skips: SkipCounter, min_size: int = 0, max_aspect_ratio: float = math.inf,
               draft_size: int | None = None):
    self.skips, self.min_size, self.max_aspect_ratio, self.draft_size = skips, min_size, max_aspect_ratio, draft_size

  def map(self, record: dict) -> dict | None:
    key = record["key"]
    try:
      image = open_image(record["image_bytes"])
      short, long = sorted(image.size)
      if short < self.min_size:
        self.skips.skip("too_small", key, f"{image.size}")
        return None
      if long > self.max_aspect_ratio * short:
        self.skips.skip("aspect_ratio", key, f"{image.size}")
        return None
      pixels = decode_image(image, self.draft_size)
    except Exception as error:  # pylint: disable=broad-except  # Pillow raises many types on bad data
      self.skips.skip("undecodable", key, f"{type(error).__name__}: {error}")
      return None
    kept = {name: value for name, value in record.items() if name != "image_bytes"}
    return {**kept, "pixels": pixels}


def resize_shorter_side(pixels: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> [h, w, 3] with min(h, w) == size, aspect kept; antialiased bicubic."""
  height, width = pixels.shape[:2]
  scale = size / min(height, width)
  shape = (max(size, round(width * scale)), max(size, round(height * scale)))  # PIL: (width, height)
  if shape == (width, height):
    return pixels
  return np.asarray(Image.fromarray(pixels).resize(shape, Image.Resampling.BICUBIC))


class ResizeCrop(grain.transforms.RandomMap):
  """{'pixels': uint8 [H, W, 3], ...} -> {'image': float32 [S, S, 3] in [-1, 1], ...}.

  The shorter side is resized to S, then an S x S window is cut at the centre or at a random place,
  then mirrored left-right with probability 1/2 if `flip`. Random choices come from grain's
  per-record generator (seeded from the pipeline seed and the record index): reproducible runs.
  """

  def __init__(self, size: int, crop: str = "center", flip: bool = False):
    if crop not in CROPS:
      raise ValueError(f"Unknown crop {crop!r}; expected one of {CROPS}.")
    self.size, self.crop, self.flip = size, crop, flip

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    pixels = resize_shorter_side(record["pixels"], self.size)
    spare_y, spare_x = pixels.shape[0] - self.size, pixels.shape[1] - self.size
    if self.crop == "random":
      top, left = int(rng.integers(spare_y + 1)), int(rng.integers(spare_x + 1))
    else:
      top, left = spare_y // 2, spare_x // 2
    pixels = pixels[top:top + self.size, left:left + self.size]
    if self.flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    kept = {name: value for name, value in record.items() if name != "pixels"}
    return {**kept, "image": pixels.astype(np.float32) / 127.5 - 1.0}


class TokenizeCaption(grain.transforms.Map):
  """Adds 'tokens': int32 [L] = tokenize([record['caption']])[0] for any `tokenize(list[str]) -> [B, L]`.

  `tokenize` must be picklable to run in mp_prefetch workers.
  """

  def __init__(self, tokenize: Callable[[list[str]], np.ndarray]):
    self.tokenize = tokenize

  def map(self, record: dict) -> dict:
    tokens = np.asarray(self.tokenize([record["caption"]]))
    if tokens.ndim != 2 or tokens.shape[0] != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokenize([caption]) must return an integer array [1, L]; got {tokens.dtype} {tokens.shape}.")
    return {**record, "tokens": tokens[0].astype(np.int32)}


class SelectFields(grain.transforms.Map):
  """Keeps the named fields of a record (those it has)."""

  def __init__(self, fields: Sequence[str]):
    self.fields = tuple(fields)

  def map(self, record: dict) -> dict:
    return {name: record[name] for name in self.fields if name in record}


def is_kept(record: dict | None) -> bool:
  """Whether a record survived decoding and filtering (the predicate of the final `.filter`)."""
  return record is not None


def image_dataset(source, *, image_size: int, crop: str = "center", flip: bool = False, seed: int = 0,
                  min_size: int = 0, max_aspect_ratio: float = math.inf, skips: SkipCounter | None = None,
                  tokenize: Callable[[list[str]], np.ndarray] | None = None, text: bool = False,
                  draft: bool = True) -> grain.MapDataset:
  """Finite grain MapDataset of examples from a record source (TarShardSource, ImageFolderSource).

  Example: {'image': float32 [S, S, 3] in [-1, 1], 'label': int32 (sources with labels),
  'tokens': int32 [L] (with `tokenize`), 'caption': str and 'key': str (with `text`)}.
  Skipped records are None until `to_iter_dataset()` drops them: batch after `to_iter_dataset`
  (MapDataset.batch refuses a filtered dataset). `seed` seeds the random crops and flips; repeat()
  downstream reseeds them every epoch. `draft`: fast reduced-scale JPEG decoding (see decode_image).
  """
  skips = SkipCounter() if skips is None else skips
  skips.add(getattr(source, "skipped", {}))
  fields = ("image", "label") + (("tokens",) if tokenize else ()) + (("caption", "key") if text else ())
  dataset = grain.MapDataset.source(source).map(
      DecodeImage(skips, min_size, max_aspect_ratio, image_size if draft else None))
  dataset = dataset.random_map(ResizeCrop(image_size, crop, flip), seed=seed)
  if tokenize is not None:
    dataset = dataset.map(TokenizeCaption(tokenize))
  return dataset.map(SelectFields(fields)).filter(is_kept)
