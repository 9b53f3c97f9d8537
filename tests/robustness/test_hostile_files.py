"""Property-based fuzzing (hypothesis) of every file the system reads from outside: safetensors
weights, webdataset tar shards, images, latent records and shards, config files and overrides.

Each case is a valid file truncated, with bytes overwritten, or with its structure edited. Every
case must end in a named error or a skip-and-count: never a hang (an alarm fails the case after
20 s), an exception of another type, or a file written outside the case's output folder. The
number of cases per suite is CASES[suite]; runs are derandomized so CI sees the same cases.
"""

import collections
import contextlib
import io
import json
import math
import pathlib
import signal
import struct
import tarfile

import numpy as np
import pytest
import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from latent_diffusion import configuration
from latent_diffusion.data import images, latent_shards, tar_shards
from latent_diffusion.weights import files
from latent_diffusion.weights.mapping import WeightImportError
from tests.data import photo_fixtures

CASES = {"safetensors": 400, "tar": 150, "images": 300, "latent_records": 400, "latent_shards": 40,
         "config_files": 150, "config_overrides": 300}


def fuzz(suite: str):
  return settings(max_examples=CASES[suite], deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def no_hang(seconds: int = 20):
  """Fails the case (TimeoutError) if its body runs longer than `seconds`."""
  def expire(signum, frame):
    raise TimeoutError(f"a fuzz case ran longer than {seconds} s")
  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _files_under(root: pathlib.Path) -> set[pathlib.Path]:
  return {p for p in root.rglob("*") if p.is_file()}


def _case_file(root: pathlib.Path, folder: str, name: str, data: bytes) -> pathlib.Path:
  """root/folder/name holding `data` (the folder is reused by every case of a suite)."""
  (root / folder).mkdir(exist_ok=True)
  path = root / folder / name
  path.write_bytes(data)
  return path


# Edits of a byte string, positions as fractions of its length: cut it, overwrite bytes, or both.
_FRACTION = st.floats(0.0, 1.0, exclude_max=True)
MUTATIONS = st.one_of(
    st.tuples(_FRACTION, st.just(())),
    st.tuples(st.none(), st.lists(st.tuples(_FRACTION, st.binary(min_size=1, max_size=4)), min_size=1, max_size=6)),
    st.tuples(_FRACTION, st.lists(st.tuples(_FRACTION, st.binary(min_size=1, max_size=4)), min_size=1, max_size=3)))


def mutate(data: bytes, mutation) -> bytes:
  cut, writes = mutation
  out = bytearray(data)
  for position, chunk in writes:
    start = int(position * len(out))
    out[start:start + len(chunk)] = chunk
  return bytes(out if cut is None else out[:int(cut * len(data))])


# --- safetensors: ours refuses everything the safetensors library refuses ---------------------------

LOADED_DTYPES = files._DTYPES  # pylint: disable=protected-access  # what our reader loads
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U8": np.uint8, "I64": np.int64}
tensor_specs = st.dictionaries(
    st.text("abcdefgh._", min_size=1, max_size=6),
    st.tuples(st.sampled_from(sorted(_ST_DTYPES)), st.lists(st.integers(0, 3), max_size=3)), min_size=1, max_size=3)
# Header edits: (tensor index, field, new value) or the raw header-length field.
header_edits = st.lists(st.one_of(
    st.tuples(st.integers(0, 2), st.just("data_offsets"), st.lists(st.integers(-2, 80), min_size=0, max_size=3)),
    st.tuples(st.integers(0, 2), st.just("shape"), st.lists(st.integers(-1, 5), max_size=3)),
    st.tuples(st.integers(0, 2), st.just("dtype"), st.sampled_from(["F32", "BF16", "U16", "X9", 7])),
    st.tuples(st.just(0), st.just("header_length"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(0), st.just("leading_space"), st.just(None))), max_size=2)


def _safetensors_bytes(spec: dict, edits) -> bytes:
  rng = np.random.default_rng(0)
  header, data, offset = {}, b"", 0
  for name, (dtype, shape) in sorted(spec.items()):
    array = (rng.normal(size=shape) * 50).astype(_ST_DTYPES[dtype])
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + array.nbytes]}
    data, offset = data + array.tobytes(), offset + array.nbytes
  names, length, leading = sorted(header), None, b""
  for index, field, value in edits:
    if field == "header_length":
      length = value
    elif field == "leading_space":
      leading = b" "
    else:
      header[names[index % len(names)]][field] = value
  encoded = leading + json.dumps(header).encode()
  encoded += b" " * (-len(encoded) % 8)
  return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
  return tmp_path_factory.mktemp("fuzz")


def test_safetensors_parser_is_at_least_as_strict_as_the_library(fuzz_root):
  outcomes = collections.Counter()

  @fuzz("safetensors")
  @given(spec=tensor_specs, edits=header_edits, mutation=st.one_of(st.none(), MUTATIONS))
  def case(spec, edits, mutation):
    data = _safetensors_bytes(spec, edits)
    data = data if mutation is None else mutate(data, mutation)
    path = fuzz_root / "case.safetensors"
    path.write_bytes(data)
    try:   # the library's Rust parser and validator
      accepted = safetensors.deserialize(data)
    except safetensors.SafetensorError:
      accepted = None
    with no_hang():
      try:
        ours = {k: np.array(v) for k, v in files.read_safetensors(path).items()}
      except WeightImportError as error:
        assert "is not a valid safetensors file" in str(error)
        ours = None
    if accepted is not None and any(info["dtype"] not in LOADED_DTYPES for _, info in accepted):
      assert ours is None   # a valid file of a dtype we do not load (e.g. U16): refused by name
      outcomes["library accepts, dtype we do not load: refused"] += 1
      return
    outcomes[("library accepts" if accepted is not None else "library refuses",
              "ours accepts" if ours is not None else "ours refuses")] += 1
    assert not (accepted is None and ours is not None), "our parser accepted a file the safetensors library refuses"
    reference = None if accepted is None else {  # arrays rebuilt from the bytes the library hands back
        name: np.frombuffer(bytes(info["data"]), LOADED_DTYPES[info["dtype"]]).reshape(info["shape"])
        for name, info in accepted}
    if reference is not None and ours is not None:
      assert ours.keys() == reference.keys()
      for name, array in reference.items():
        assert ours[name].dtype == array.dtype and ours[name].shape == array.shape
        np.testing.assert_array_equal(ours[name], array)

  case()
  print("safetensors cases:", dict(outcomes))
  assert sum(outcomes.values()) == CASES["safetensors"]
  assert outcomes["library accepts", "ours accepts"] >= 20 and outcomes["library refuses", "ours refuses"] >= 100
  assert outcomes["library accepts", "ours refuses"] == 0   # as strict, not stricter, on the dtypes we load


# --- tar shards through the image pipeline: skip and count, exactly accounted -----------------------

def _image_bytes(kind: str, rng) -> bytes:
  pixels = rng.integers(0, 256, size=(int(rng.integers(8, 24)), int(rng.integers(8, 24)), 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}[kind])
  return out.getvalue()


class _Bytes(bytes):
  def __repr__(self):   # keeps hypothesis' failure reports short
    return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def clean_tar(fuzz_root):
  """(tar bytes, {key: offset of its first header}, {key: clean pipeline output}) with hostile names."""
  rng = np.random.default_rng(1)
  members = []
  for i, kind in enumerate(["jpg", "png", "webp", "gif", "bmp", "jpg"]):
    key = f"sample{i}"
    members += [(f"{key}.{kind}", _image_bytes(kind, rng)), (f"{key}.txt", f"caption {i}".encode()),
                (f"{key}.json", json.dumps({"i": i}).encode())]
  members += [("../../escape.jpg", _image_bytes("jpg", rng)), ("/absolute/path.png", _image_bytes("png", rng))]
  path = fuzz_root / "clean.tar"
  photo_fixtures.write_tar(path, members)
  with tarfile.open(path) as tar:
    first = {}
    for member in tar.getmembers():
      first.setdefault(tar_shards._split_name(member.name)[0], member.offset)  # pylint: disable=protected-access
  clean = _pipeline(path)[0]
  assert len(clean) == 8
  return _Bytes(path.read_bytes()), first, clean


def _pipeline(path: pathlib.Path, cache: pathlib.Path | None = None):
  """({key: image}, SkipCounter, the source's index keys) of the image pipeline over one shard."""
  skips = images.SkipCounter("fuzz")
  source = tar_shards.TarShardSource(str(path), cache_dir=cache)
  dataset = images.image_dataset(source, image_size=16, skips=skips, text=True)
  indexed = {source[i]["key"] for i in range(len(source))}
  return {ex["key"]: ex["image"] for ex in dataset.to_iter_dataset()}, skips, indexed


def test_damaged_tar_shards_are_skipped_and_counted_exactly(fuzz_root, clean_tar):
  data, first_header, clean = clean_tar
  outcomes = collections.Counter()

  @fuzz("tar")
  @given(mutation=MUTATIONS)
  def case(mutation):
    case_dir = _case_file(fuzz_root, "tar_case", "shard.tar", mutate(data, mutation)).parent
    outside = _files_under(fuzz_root) - _files_under(case_dir)
    with no_hang():
      out, skips, indexed = _pipeline(case_dir / "shard.tar", cache=case_dir / "cache")
    assert _files_under(fuzz_root) - _files_under(case_dir) == outside   # wrote nothing outside its folder
    dropped = set().union(*(skips.keys(r) for r in ("undecodable", "too_small", "aspect_ratio")))
    assert out.keys() | dropped == indexed and not out.keys() & dropped   # every indexed sample: kept or counted
    for image in out.values():
      assert image.shape == (16, 16, 3) and image.dtype == np.float32 and np.all(np.abs(image) <= 1.0)
    cut, writes = mutation
    if not writes:   # a pure cut: every sample whose first header is whole is kept (identical) or counted
      begun = {key for key, offset in first_header.items() if offset + tarfile.BLOCKSIZE <= int(cut * len(data))}
      counted = dropped | skips.keys("truncated_tar") | skips.keys("no_image") | {str(case_dir / "shard.tar")}
      assert begun <= out.keys() | counted
      for key, image in out.items():
        np.testing.assert_array_equal(image, clean[key])
    outcomes["kept"] += len(out)
    for reason, count in skips.counts().items():
      outcomes[f"skipped: {reason}"] += count

  case()
  print("tar cases:", CASES["tar"], "samples:", dict(outcomes))
  assert outcomes["kept"] > 0 and outcomes["skipped: truncated_tar"] > 0 and outcomes["skipped: undecodable"] > 0


# --- images: decoded or skipped as undecodable ----------------------------------------------------

def test_damaged_images_decode_or_are_skipped_and_counted():
  rng = np.random.default_rng(2)
  clean = [_image_bytes(kind, rng) for kind in ("jpg", "png", "webp", "gif", "bmp")]
  outcomes = collections.Counter()

  @fuzz("images")
  @given(which=st.integers(0, 4), mutation=MUTATIONS)
  def case(which, mutation):
    skips = images.SkipCounter("fuzz")
    with no_hang():
      decoded = images.DecodeImage(skips).map({"key": "k", "image_bytes": mutate(clean[which], mutation)})
    if decoded is None:
      assert skips.counts() == {"undecodable": 1}
      outcomes["skipped"] += 1
    else:
      pixels = decoded["pixels"]
      assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 1
      assert skips.counts() == {}
      outcomes["decoded"] += 1

  case()
  print("image cases:", dict(outcomes))
  assert sum(outcomes.values()) == CASES["images"] and min(outcomes["decoded"], outcomes["skipped"]) > 20


# --- latent records and shards ----------------------------------------------------------------------

def _record(rng) -> dict:
  return {"key": "k1", "caption": "a caption", "label": 3,
          "latent_mean": rng.normal(size=(2, 2, 4)).astype(np.float32),
          "latent_logvar": rng.normal(size=(2, 2, 4)).astype(np.float16), "tokens": np.arange(5, dtype=np.int32)}


def test_damaged_latent_records_decode_or_raise_a_named_error():
  clean = latent_shards.encode_record(_record(np.random.default_rng(3)))
  outcomes = collections.Counter()

  @fuzz("latent_records")
  @given(mutation=MUTATIONS, garbage=st.one_of(st.none(), st.binary(max_size=64)))
  def case(mutation, garbage):
    data = mutate(clean, mutation) if garbage is None else garbage
    with no_hang():
      try:
        example = latent_shards.decode_record(data)
      except latent_shards.LatentRecordError:
        outcomes["LatentRecordError"] += 1
        return
    assert isinstance(example["key"], str)
    for value in example.values():
      if isinstance(value, np.ndarray):
        assert value.dtype in (np.float32, np.int32)
    outcomes["decoded"] += 1

  case()
  print("latent record cases:", dict(outcomes))
  assert outcomes["decoded"] >= 10 and outcomes["LatentRecordError"] > 100


@pytest.fixture(scope="module")
def clean_shard(fuzz_root):
  path = fuzz_root / "clean_shard.array_record"
  writer = latent_shards.ShardWriter(path)
  rng = np.random.default_rng(4)
  for i in range(40):
    writer.write({**_record(rng), "key": f"r{i}"})
  writer.commit()
  return path.read_bytes()


def test_damaged_latent_shards_raise_a_named_error_or_skip_and_count(fuzz_root, clean_shard):
  outcomes = collections.Counter()

  @fuzz("latent_shards")
  @given(mutation=MUTATIONS)
  def case(mutation):
    case_dir = _case_file(fuzz_root, "shard_case", f"s{latent_shards.SUFFIX}", mutate(clean_shard, mutation)).parent
    skips = images.SkipCounter("fuzz")
    with no_hang():
      try:
        dataset = latent_shards.latent_dataset(case_dir, skips)
      except latent_shards.LatentShardError as error:
        assert f"s{latent_shards.SUFFIX}" in str(error) and "rerun the same latent_diffusion.cli.encode" in str(error)
        outcomes["LatentShardError"] += 1
        return
      examples = list(dataset.to_iter_dataset())
    assert len(examples) + skips.counts().get("corrupt_record", 0) == len(dataset)
    assert all(ex["latent_mean"].shape == (2, 2, 4) for ex in examples)
    outcomes["records read"] += len(examples)
    outcomes["records skipped"] += skips.counts().get("corrupt_record", 0)

  case()
  print("latent shard cases:", CASES["latent_shards"], dict(outcomes))
  assert outcomes["LatentShardError"] > 0 and outcomes["records read"] > 0


# --- config files, overrides and the config saved with a checkpoint ---------------------------------

CONFIG_TEXT = pathlib.Path("configs/tiny.py").read_bytes()
_DIGITS = [i for i, c in enumerate(CONFIG_TEXT) if chr(c).isdigit()]
# Typos: digits replaced by digits (the file usually still runs), besides the generic damage.
CONFIG_MUTATIONS = st.one_of(MUTATIONS, st.tuples(st.none(), st.lists(
    st.tuples(st.sampled_from(_DIGITS).map(lambda i: i / len(CONFIG_TEXT)), st.sampled_from([b"0", b"7", b"9"])),
    min_size=1, max_size=3)))


def test_damaged_config_files_load_or_raise_config_error(fuzz_root):
  outcomes = collections.Counter()

  @fuzz("config_files")
  @given(mutation=CONFIG_MUTATIONS)
  def case(mutation):
    path = fuzz_root / "fuzzed_config.py"
    path.write_bytes(mutate(CONFIG_TEXT, mutation))
    with no_hang():
      try:
        config = configuration.load_config(str(path))
      except configuration.ConfigError as error:
        assert "fuzzed_config.py" in str(error)
        outcomes["ConfigError"] += 1
        return
      outcomes["loaded"] += 1
      saved = mutate(config.to_json_best_effort().encode(), mutation).decode(errors="replace")
      try:   # the same damage to the config saved with a checkpoint
        configuration.config_from_json(saved)
        outcomes["saved config loaded"] += 1
      except configuration.ConfigError:
        outcomes["saved config: ConfigError"] += 1

  case()
  print("config file cases:", dict(outcomes))
  assert outcomes["ConfigError"] > 20 and outcomes["loaded"] > 5


def test_config_overrides_apply_or_raise_config_error():
  outcomes = collections.Counter()

  @fuzz("config_overrides")
  @given(key=st.one_of(st.sampled_from(["data.batch_size", "ldm.model.channel_mult", "mesh.shape", "seed", "stages",
                                        "sample.guidance_scale", "data.num_classes", "autoencoder.loss.kl_weight",
                                        "ldm.conditioning.kinds", "ldm.conditioning.text.max_length",
                                        "data.batch_size.x", "ldm..model", "nope", ""]), st.text(max_size=20)),
         value=st.one_of(st.text(max_size=30), st.sampled_from(["(1, 2)", "[", "1e309", "None", "True", "-1", "'x'",
                                                                "__import__('os')", "(" * 60 + ")" * 60])))
  def case(key, value):
    with no_hang():
      try:
        configuration.parse_config_args(["--config=configs/tiny.py", f"--config.{key}={value}"])
        outcomes["applied"] += 1
      except configuration.ConfigError:
        outcomes["ConfigError"] += 1

  case()
  print("config override cases:", dict(outcomes))
  assert outcomes["applied"] > 5 and outcomes["ConfigError"] > 100
