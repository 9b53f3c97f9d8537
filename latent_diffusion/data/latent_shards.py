"""ArrayRecord shards of pre-encoded latents: the record codec, a shard writer, a grain source.

A record is msgpack of {'key': str, 'caption': str (None if the source had none), 'label': int (-1 if none),
'latent_mean' and 'latent_logvar' (or 'latent' for a stored posterior sample), optionally 'tokens' and
'token_mask' (int32 [L]) and 'context' (the frozen text encoder's output [L, D]): arrays as {'dtype', 'shape',
'data'}}, latents NHWC [h, w, c]. Shard files are written as '<name>.partial' and renamed when complete, so a
reader never sees half a shard.

Damaged files: a shard that does not open (truncated, not ArrayRecord) is a LatentShardError naming
it; a record that cannot be read or decoded (flipped bytes) is skipped and counted as
'corrupt_record' by the data set's SkipCounter.
"""

import glob
import json
import math
import pathlib

import grain
import ml_dtypes
import msgpack
import numpy as np
from array_record.python import array_record_module

from latent_diffusion.data.images import SkipCounter

SUFFIX = ".array_record"
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "int32": np.int32}


class LatentRecordError(ValueError):
  """A latent record's bytes do not decode into the record layout (see the module docstring)."""


class LatentShardError(OSError):
  """A latent shard file cannot be opened; the message says which and how to redo it."""


def encode_record(example: dict) -> bytes:
  """Serialises {key, caption, label, and latent arrays} (see module docstring)."""
  packed = {}
  for name, value in example.items():
    if isinstance(value, np.ndarray):
      packed[name] = {"dtype": value.dtype.name, "shape": list(value.shape), "data": value.tobytes()}
    else:
      packed[name] = value
  return msgpack.packb(packed, use_bin_type=True)


def _array(name: str, value: dict) -> np.ndarray:
  dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
  if dtype not in _DTYPES or not isinstance(data, bytes) or not isinstance(shape, list) or not all(
      isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
    raise LatentRecordError(f"field {name!r} is not an array record (dtype {dtype!r}, shape {shape!r})")
  if len(data) != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize:
    raise LatentRecordError(f"field {name!r} holds {len(data)} bytes, not those of a {dtype} array of shape {shape}")
  return np.frombuffer(data, _DTYPES[dtype]).reshape(shape)


def decode_record(record: bytes, dtype=np.float32) -> dict:
  """The example of `encode_record`, latent (floating) arrays cast to `dtype`, token ids int32.
  Raises LatentRecordError for bytes that are not such a record."""
  try:
    example = msgpack.unpackb(record, raw=False, strict_map_key=True)
  except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.StackError) as error:
    raise LatentRecordError(f"not a msgpack record: {type(error).__name__}: {error}") from None
  if not isinstance(example, dict) or not isinstance(example.get("key"), str):
    raise LatentRecordError(f"not a record with a string 'key' but a {type(example).__name__}")
  for name, value in example.items():
    if isinstance(value, dict):
      array = _array(name, value)
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
    raise FileNotFoundError(f"No latent shards (*{SUFFIX}) in {directory}; run latent_diffusion.cli.encode first.")
  return paths


def open_shards(paths: list[str]) -> grain.sources.ArrayRecordDataSource:
  """One grain source over the shard files; LatentShardError names each file that does not open."""
  try:
    return grain.sources.ArrayRecordDataSource(paths)
  except RuntimeError:   # find which (the combined error does not always say)
    broken = []
    for path in paths:
      try:
        grain.sources.ArrayRecordDataSource([path])
      except RuntimeError as error:
        broken.append(f"{path} ({str(error)[:160]})")
    raise LatentShardError(f"Latent shard(s) cannot be opened (truncated or not ArrayRecord): {broken}. Delete each "
                           f"with its .json sidecar and rerun the same latent_diffusion.cli.encode command: it redoes "
                           f"exactly the missing shards.") from None


class _Records(grain.transforms.Map):
  """Record index -> example dict, or None (skipped and counted) if the record is unreadable or corrupt."""

  def __init__(self, source, skips: SkipCounter):
    self.source, self.skips = source, skips

  def map(self, index: int) -> dict | None:
    try:
      example = decode_record(self.source[int(index)])
      if "latent" in example:   # a stored sample: a point mass
        example["latent_mean"] = example.pop("latent")
        example["latent_logvar"] = np.full_like(example["latent_mean"], -30.0)
      example["label"] = np.int32(example.get("label", -1))
      return example
    except (LatentRecordError, RuntimeError) as error:   # RuntimeError: riegeli's checksum / framing errors
      self.skips.skip("corrupt_record", f"record {index}", f"{type(error).__name__}: {error}")
      return None


def latent_dataset(directory: str | pathlib.Path, skips: SkipCounter | None = None) -> grain.MapDataset:
  """Examples {'latent_mean', 'latent_logvar' float32 [h, w, c], 'label', 'key', 'caption'} of every
  complete shard under `directory`, in shard order. A stored sample becomes mean with logvar -inf
  clipped (a point mass). Corrupt records are None until `to_iter_dataset()` drops them."""
  source = open_shards(shard_paths(directory))
  skips = SkipCounter(f"latents {directory}") if skips is None else skips
  return grain.MapDataset.range(len(source)).map(_Records(source, skips))


class LatentsNotReadyError(ValueError):
  """A latents folder is missing, unfinished or empty; the message says which and what to run."""


MANIFEST = "manifest.json"


def read_manifest(directory: str | pathlib.Path) -> dict:
  """The manifest.json of a finished, non-empty encode job's output `directory` (LatentsNotReadyError otherwise).

  The encode job writes the manifest last, after every shard is committed: a folder without it is a job
  that was killed and not rerun, and stage 2 would see only part of the data.
  """
  directory = pathlib.Path(directory)
  rerun = "rerun the same latent_diffusion.cli.encode command (it resumes and redoes only the missing shards)"
  if not directory.is_dir():
    raise LatentsNotReadyError(f"config.ldm.latents_path={directory}: no such folder; write it with "
                               f"latent_diffusion.cli.encode --output={directory}.")
  path = directory / MANIFEST
  if not path.is_file():
    done, planned = len(list(directory.glob("latents-*.json"))), sorted(directory.glob(f"latents-*{SUFFIX}*"))
    total = planned[0].name.split("-of-")[1].split(".")[0].lstrip("0") if planned else "?"
    raise LatentsNotReadyError(f"The encode job writing {directory} has not finished ({done} of {total} shards "
                               f"complete, no {MANIFEST}): {rerun}, then start stage 2.")
  manifest = json.loads(path.read_text())
  missing = [name for name in manifest["shards"] if not (directory / name).is_file()]
  if missing:
    raise LatentsNotReadyError(f"{path} lists shard(s) missing from the folder: {missing}; {rerun}.")
  if not manifest["records"]:
    raise LatentsNotReadyError(f"{directory} holds no latent record (the encode job skipped every sample: "
                               f"{manifest['skipped_counts']}); encode data that has images stage 1 can read.")
  return manifest
