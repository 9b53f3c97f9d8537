"""ArrayRecord shards of pre-encoded latents: the record codec, a shard writer, a grain source.

A record is msgpack of {'key': str, 'caption': str, 'label': int (-1 if none), 'latent_mean' and
'latent_logvar' (or 'latent' for a stored posterior sample), optionally 'tokens' (int32 [L]):
arrays as {'dtype', 'shape', 'data'}}, latents NHWC [h, w, c]. Shard files are written as '<name>.partial' and renamed when complete, so a
reader never sees half a shard.
"""

import glob
import pathlib

import grain
import ml_dtypes
import msgpack
import numpy as np
from array_record.python import array_record_module

SUFFIX = ".array_record"
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "int32": np.int32}


def encode_record(example: dict) -> bytes:
  """Serialises {key, caption, label, and latent arrays} (see module docstring)."""
  packed = {}
  for name, value in example.items():
    if isinstance(value, np.ndarray):
      packed[name] = {"dtype": value.dtype.name, "shape": list(value.shape), "data": value.tobytes()}
    else:
      packed[name] = value
  return msgpack.packb(packed, use_bin_type=True)


def decode_record(record: bytes, dtype=np.float32) -> dict:
  """The example of `encode_record`, latent (floating) arrays cast to `dtype`, token ids int32."""
  example = msgpack.unpackb(record, raw=False)
  for name, value in example.items():
    if isinstance(value, dict) and "data" in value:
      array = np.frombuffer(value["data"], _DTYPES[value["dtype"]]).reshape(value["shape"])
      example[name] = array if array.dtype == np.int32 else array.astype(dtype)
  return example


class ShardWriter:
  """Writes one shard atomically: records go to '<path>.partial', `commit` renames it."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._partial = path.with_name(path.name + ".partial")
    self._writer = array_record_module.ArrayRecordWriter(str(self._partial), "group_size:1")
    self.count = 0

  def write(self, example: dict) -> None:
    self._writer.write(encode_record(example))
    self.count += 1

  def commit(self) -> None:
    self._writer.close()
    self._partial.replace(self.path)

  def abandon(self) -> None:
    """Closes and deletes the unfinished shard."""
    self._writer.close()
    self._partial.unlink(missing_ok=True)


def shard_paths(directory: str | pathlib.Path) -> list[str]:
  """Sorted complete shard files of an encoding job's output directory."""
  paths = sorted(glob.glob(str(pathlib.Path(directory) / f"*{SUFFIX}")))
  if not paths:
    raise FileNotFoundError(f"No latent shards (*{SUFFIX}) in {directory}; run latent_diffusion.encode first.")
  return paths


def latent_dataset(directory: str | pathlib.Path) -> grain.MapDataset:
  """Examples {'latent_mean', 'latent_logvar' float32 [h, w, c], 'label', 'key', 'caption'} of every
  complete shard under `directory`, in shard order. A stored sample becomes mean with logvar -inf
  clipped (a point mass)."""
  source = grain.sources.ArrayRecordDataSource(shard_paths(directory))

  def parse(record: bytes) -> dict:
    example = decode_record(record)
    if "latent" in example:
      example["latent_mean"] = example.pop("latent")
      example["latent_logvar"] = np.full_like(example["latent_mean"], -30.0)
    example["label"] = np.int32(example["label"])
    return example

  return grain.MapDataset.source(source).map(parse)
