"""Small image data sets cut from real photos that ship with scikit-image and scikit-learn.

`write_shards` lays them out the way img2dataset does ('{key}.jpg' + '{key}.txt' + '{key}.json' per
sample in webdataset tar shards) and adds the corruptions met in practice; `write_class_folders`
builds an ImageNet-style tree. Both return the expected decoded pixels of every good sample.
"""

import dataclasses
import io
import json
import pathlib
import tarfile

import numpy as np
from PIL import Image


def photos() -> dict[str, np.ndarray]:
  """Real photographs as uint8 [H, W, 3], or [H, W] for the grayscale 'camera'."""
  import skimage.data
  from sklearn.datasets import load_sample_images

  named = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")}
  china, flower = load_sample_images().images
  return {**named, "china": china, "flower": flower}


def random_crop(photo: np.ndarray, rng: np.random.Generator, min_side: int = 40, max_side: int = 120) -> np.ndarray:
  """A crop of random height and width in [min_side, max_side] at a random place."""
  height, width = (int(rng.integers(min_side, max_side + 1)) for _ in range(2))
  top, left = int(rng.integers(photo.shape[0] - height + 1)), int(rng.integers(photo.shape[1] - width + 1))
  return photo[top:top + height, left:left + width].copy()


# How a crop is stored: (file extension, encoder). Each encoder returns (bytes, the RGB pixels a
# correct decoder must produce, whether decoding is exact or lossy).
def _jpeg(rgb):
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "JPEG", quality=95)
  return out.getvalue(), rgb, False


def _cmyk_jpeg(rgb):
  out = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(out, "JPEG", quality=95)
  return out.getvalue(), rgb, False


def _png(rgb):
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "PNG")
  return out.getvalue(), rgb, True


def _grey_png(rgb):
  grey = np.asarray(Image.fromarray(rgb).convert("L"))
  out = io.BytesIO()
  Image.fromarray(grey).save(out, "PNG")
  return out.getvalue(), np.repeat(grey[..., None], 3, axis=-1), True


def _palette_png(rgb):
  palette = Image.fromarray(rgb).quantize(64)
  out = io.BytesIO()
  palette.save(out, "PNG")
  return out.getvalue(), np.asarray(palette.convert("RGB")), True


def _alpha_png(rgb):
  """Left half transparent: it must come out white."""
  alpha = np.full(rgb.shape[:2], 255, np.uint8)
  alpha[:, :rgb.shape[1] // 2] = 0
  out = io.BytesIO()
  Image.fromarray(np.dstack([rgb, alpha])).save(out, "PNG")
  expected = rgb.copy()
  expected[:, :rgb.shape[1] // 2] = 255
  return out.getvalue(), expected, True


def _webp(rgb):
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "WEBP", lossless=True)
  return out.getvalue(), rgb, True


ENCODINGS = (("jpg", _jpeg), ("png", _png), ("webp", _webp), ("jpg", _cmyk_jpeg), ("png", _grey_png),
             ("png", _palette_png), ("png", _alpha_png))


@dataclasses.dataclass
class Expected:
  """What a good sample must decode to: RGB uint8 [H, W, 3] pixels, exactly or within JPEG loss."""
  pixels: np.ndarray
  exact: bool
  caption: str
  metadata: dict
  label: int = -1


def _rgb(photo: np.ndarray) -> np.ndarray:
  return np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo


def write_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
  """A tar of (member name, bytes) in the given order, as webdataset's TarWriter lays samples out."""
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o444
      tar.addfile(info, io.BytesIO(data))


def write_shards(directory: pathlib.Path, num_shards: int = 3, per_shard: int = 8, seed: int = 0):
  """Writes directory/{00000..num_shards-1}.tar with per_shard good samples each, plus corruptions.

  Returns (expected {key: Expected} of the good samples in index order, {reason: {key}} of the
  samples the pipeline must skip). Corruptions: shard 0 has a JPEG of garbage bytes and a sample
  with only a caption; shard 1 a JPEG cut in half; the last shard is cut in the middle of the image
  of its sample `per_shard // 2` (the samples after it are lost, those before it kept).
  """
  rng = np.random.default_rng(seed)
  sources = photos()
  names = sorted(sources)
  expected, skipped = {}, {"undecodable": set(), "no_image": set(), "truncated_tar": set()}
  for shard in range(num_shards):
    members, cut_offset = [], None
    for i in range(per_shard):
      key = f"{shard:05d}{i:04d}"
      photo = names[int(rng.integers(len(names)))]
      ext, encode = ENCODINGS[(shard * per_shard + i) % len(ENCODINGS)]
      data, pixels, exact = encode(random_crop(_rgb(sources[photo]), rng))
      caption, metadata = f"a crop of {photo} #{i}", {"key": key, "width": pixels.shape[1], "height": pixels.shape[0]}
      if shard == num_shards - 1 and i == per_shard // 2:
        cut_offset = len(members)
        skipped["truncated_tar"].add(key)
      elif shard == num_shards - 1 and i > per_shard // 2:
        pass  # lost beyond the cut
      else:
        expected[key] = Expected(pixels, exact, caption, metadata)
      members += [(f"{key}.{ext}", data), (f"{key}.json", json.dumps(metadata).encode()),
                  (f"{key}.txt", caption.encode())]
    if shard == 0:
      members += [("00000garbage.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(3000)), ("00000garbage.txt", b"noise"),
                  ("00000textonly.txt", b"a caption without its image")]
      skipped["undecodable"].add("00000garbage")
      skipped["no_image"].add("00000textonly")
    if shard == 1:
      whole, _, _ = _jpeg(random_crop(_rgb(sources["coffee"]), rng))
      members += [("00001halfjpeg.jpg", whole[:len(whole) // 2]), ("00001halfjpeg.txt", b"cut")]
      skipped["undecodable"].add("00001halfjpeg")
    path = directory / f"{shard:05d}.tar"
    write_tar(path, members)
    if cut_offset is not None:
      _truncate_inside_member(path, members[cut_offset][0])
  return expected, skipped


def _truncate_inside_member(path: pathlib.Path, name: str) -> None:
  """Cuts the file in the middle of member `name`'s data (as a crashed writer leaves it)."""
  with tarfile.open(path) as tar:
    member = tar.getmember(name)
  with open(path, "r+b") as f:
    f.truncate(member.offset_data + member.size // 2)


def write_class_folders(root: pathlib.Path, per_class: int = 3, seed: int = 0) -> dict[str, Expected]:
  """root/<photo name>/<i>.png (lossless) for three photos: {key 'class/file': Expected}."""
  rng = np.random.default_rng(seed)
  sources = photos()
  expected = {}
  for label, name in enumerate(sorted(["chelsea", "camera", "rocket"])):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      data, pixels, _ = _png(random_crop(_rgb(sources[name]), rng))
      (root / name / f"{i}.png").write_bytes(data)
      expected[f"{name}/{i}.png"] = Expected(pixels, True, name, {}, label)
  (root / "chelsea" / "notes.txt").write_text("not an image")
  return expected
