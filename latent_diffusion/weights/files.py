"""Reading and writing checkpoint files from local paths only (never a network).

safetensors is parsed here (8-byte little-endian header length, JSON header, raw bytes) so that a
truncated or corrupt file is reported with the tensor it breaks on, and bfloat16 / float16 files
load through ml_dtypes; it refuses everything the `safetensors` library refuses (fuzz-tested).
PyTorch pickles (.ckpt/.bin/.pt) need torch and load with weights_only.
"""

import json
import math
import pathlib
import struct

import ml_dtypes
import numpy as np

from latent_diffusion.weights.mapping import WeightImportError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def require_file(path: str | pathlib.Path, what: str) -> pathlib.Path:
  """`path` as a Path if it is a file, else FileNotFoundError saying what was looked for."""
  path = pathlib.Path(path)
  if not path.is_file():
    listing = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else "the folder does not exist"
    raise FileNotFoundError(f"{what} not found: {path} (folder holds: {listing}). Weights load from local paths only; "
                            f"nothing is downloaded.")
  return path


def weights_file(folder: str | pathlib.Path, names: tuple[str, ...], what: str) -> pathlib.Path:
  """The first of `names` present in `folder` (preference order), else FileNotFoundError for the first."""
  folder = pathlib.Path(folder)
  for name in names:
    if (folder / name).is_file():
      return folder / name
  return require_file(folder / names[0], f"{what} ({' or '.join(names)})")


# The safetensors format's own limit on the JSON header (the Rust reference refuses larger ones).
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000


def _safetensors_layout(header: dict, data_bytes: int, bad) -> list[tuple[str, np.dtype, list[int], int, int]]:
  """[(name, dtype, shape, start, end)] of a parsed header, checked as strictly as the reference
  implementation: known dtype, shape of non-negative ints, byte count = elements x item size, and
  offsets that tile the data section exactly (sorted, contiguous from 0, no overlap, no gap, no tail)."""
  layout = []
  for name, info in header.items():
    if not isinstance(info, dict):
      raise bad(f"entry {name!r} is {type(info).__name__}, not an object")
    if info.get("dtype") not in _DTYPES:
      raise bad(f"tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    integers = lambda v: isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)  # bool is not an int here
    if not integers(shape):
      raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
    if not integers(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
      raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end] with begin <= end")
    dtype = np.dtype(_DTYPES[info["dtype"]])
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
      raise bad(f"tensor {name!r} of shape {shape} {info['dtype']} spans {offsets[1] - offsets[0]} bytes, "
                f"not {math.prod(shape) * dtype.itemsize}")
    layout.append((name, dtype, shape, offsets[0], offsets[1]))
  end = 0
  for name, _, _, start, stop in sorted(layout, key=lambda t: (t[3], t[4])):
    if start != end:
      raise bad(f"tensor {name!r} starts at data byte {start}, where {end} was expected (overlap or gap)")
    end = stop
  if end != data_bytes:
    raise bad(f"the tensors cover {end} data bytes but the file holds {data_bytes} (truncated, or trailing bytes)")
  return layout


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """name -> array of a .safetensors file (memory-mapped, read-only).

  As strict as the `safetensors` library (tests/robustness/test_hostile_files.py fuzzes both): any
  violation of the format is a WeightImportError naming the file and the tensor it breaks on.
  """
  path = require_file(path, "safetensors file")
  size = path.stat().st_size
  bad = lambda why: WeightImportError(f"{path} is not a valid safetensors file ({why}); it may be truncated or "
                                      f"corrupt: re-copy or re-export it.")
  if size < 8:
    raise bad(f"{size} bytes, shorter than the 8-byte header length")
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_SAFETENSORS_HEADER_BYTES:
      raise bad(f"header length {header_len} exceeds the format's limit of {MAX_SAFETENSORS_HEADER_BYTES} bytes")
    if 8 + header_len > size:
      raise bad(f"header of {header_len} bytes runs past the end of the {size}-byte file")
    text = f.read(header_len)
  try:
    header = json.loads(text.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise bad(f"header is not UTF-8 JSON: {e}") from None
  if not isinstance(header, dict):
    raise bad(f"header is a JSON {type(header).__name__}, not an object")
  metadata = header.pop("__metadata__", {})
  if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
    raise bad("__metadata__ is not an object of strings")
  data_start = 8 + header_len
  layout = _safetensors_layout(header, size - data_start, bad)
  data = np.memmap(path, np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
  return {name: data[data_start + start:data_start + stop].view(dtype).reshape(shape)
          for name, dtype, shape, start, stop in layout}


def write_safetensors(tensors: dict[str, np.ndarray], path: str | pathlib.Path,
                      metadata: dict[str, str] | None = None) -> None:
  """Writes name -> array as .safetensors (keys sorted, 8-byte aligned header), atomically."""
  path = pathlib.Path(path)
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _CODES:
      raise ValueError(f"Cannot write tensor {name!r} of dtype {array.dtype} to safetensors.")
    header[name] = {"dtype": _CODES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays.append(array)
  if metadata:
    header["__metadata__"] = metadata
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".partial")
  with open(partial, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)) + encoded)
    for array in arrays:
      f.write(array.tobytes())
  partial.replace(path)


def read_pickle_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """name -> float array of a PyTorch checkpoint; unwraps Lightning's {'state_dict': ...}."""
  path = require_file(path, "PyTorch checkpoint")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightImportError(f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), or convert "
                            f"it to .safetensors first.") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a damaged zip/pickle
    raise WeightImportError(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {e}); it may be "
                            f"truncated or corrupt.") from None
  state = state.get("state_dict", state)
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()
          if isinstance(v, torch.Tensor)}


def read_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Tensors of a .safetensors file or a PyTorch pickle (.ckpt/.bin/.pt/.pth), by suffix."""
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  if path.suffix in PICKLE_SUFFIXES:
    return read_pickle_checkpoint(path)
  raise WeightImportError(f"{path}: unknown checkpoint suffix {path.suffix!r}; expected .safetensors or one of "
                          f"{PICKLE_SUFFIXES}.")


def read_json(path: str | pathlib.Path, what: str) -> dict:
  path = require_file(path, what)
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise WeightImportError(f"{path} ({what}) is not valid JSON: {e}.") from None
