"""Images/s of one worker decoding and cropping JPEG photos from a tar shard (no parallelism).

  python benchmarks/data_pipeline.py [--images=96] [--size=256] [--repeats=3]

Writes one shard of real photos (scikit-image / scikit-learn samples, 300x451 to 512x640 pixels,
JPEG quality 90) to a temporary directory, then times reading + decoding + resizing the shorter
side + random S x S crop + flip + normalising, record by record in one thread, with and without
reduced-scale JPEG decoding ("draft"). Prints the best of `--repeats` passes.
"""

import argparse
import io
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from latent_diffusion.data import images  # noqa: E402
from latent_diffusion.data.tar_shards import TarShardSource  # noqa: E402
from tests.data import photo_fixtures  # noqa: E402


def write_photo_shard(path: pathlib.Path, count: int) -> None:
  """`count` img2dataset-style samples cycling over the full-size photos (grey ones as RGB)."""
  photos = [np.asarray(Image.fromarray(p).convert("RGB")) for p in photo_fixtures.photos().values()]
  members = []
  for i in range(count):
    encoded = io.BytesIO()
    Image.fromarray(photos[i % len(photos)]).save(encoded, "JPEG", quality=90)
    members += [(f"{i:09d}.jpg", encoded.getvalue()), (f"{i:09d}.txt", b"a photo")]
  photo_fixtures.write_tar(path, members)


def images_per_second(source: TarShardSource, size: int, draft: bool, repeats: int) -> float:
  dataset = images.image_dataset(source, image_size=size, crop="random", flip=True, draft=draft)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for i in range(len(dataset)):
      dataset[i]
    best = min(best, time.perf_counter() - start)
  return len(dataset) / best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=96)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as directory:
    path = pathlib.Path(directory) / "00000.tar"
    write_photo_shard(path, args.images)
    source = TarShardSource(str(path))
    for draft in (False, True):
      rate = images_per_second(source, args.size, draft, args.repeats)
      print(f"JPEG decode + {args.size}x{args.size} random crop, 1 worker, draft={draft}: {rate:.0f} images/s")


if __name__ == "__main__":
  main()
