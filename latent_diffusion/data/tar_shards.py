"""Webdataset tar shards as written by img2dataset, read by random access.

A shard holds samples as consecutive members sharing a key: '{key}.jpg' (or png/webp/...),
'{key}.txt' (caption), '{key}.json' (metadata). One forward pass over each shard's tar headers
records where every member's bytes live; a sample is then read with two or three positional reads
(`os.pread`), so any worker can fetch any sample without scanning or loading whole shards.

The sample order is global and deterministic (shards in pattern order, samples in tar order), so
every process can take its slice (`dataset[process_index::process_count]`) of the same index.
"""

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import tarfile

import braceexpand
import numpy as np

# Image member extensions, in order of preference when a sample has several.
IMAGE_FORMATS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
# Columns of `ShardIndex.spans`: which member each (offset, size) pair locates.
_IMAGE, _CAPTION, _METADATA = 0, 1, 2
_BLOCK = tarfile.BLOCKSIZE
_INDEX_VERSION = 1


def expand_shards(patterns: str | list[str]) -> tuple[list[pathlib.Path], list[str]]:
  """(existing shard files, missing paths) named by one or more brace patterns, in pattern order.

  Patterns expand as bash does (braceexpand): 'a/{000..002}.tar' keeps the zero padding, '{x,y}' lists,
  several groups expand as a product, leftmost slowest; backslashes are path characters, not escapes.
  img2dataset leaves gaps where a shard failed to download, so missing shards are returned rather
  than fatal; a pattern set that matches no file at all raises FileNotFoundError.
  """
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  try:
    paths = [pathlib.Path(p) for pattern in patterns for p in braceexpand.braceexpand(pattern, escape=False)]
  except braceexpand.UnbalancedBracesError as error:
    raise ValueError(f"Shard pattern(s) {patterns}: {error}; write ranges as {{00000..00127}}.") from None
  found = [p for p in paths if p.is_file()]
  if not found:
    raise FileNotFoundError(f"No shard file matches {patterns} (expanded to {len(paths)} paths, "
                            f"e.g. {[str(p) for p in paths[:2]]}).")
  return found, [str(p) for p in paths if not p.is_file()]


@dataclasses.dataclass
class ShardIndex:
  """Where the samples of one shard live.

  keys: [N] str; formats: [N] index into IMAGE_FORMATS; spans: int64 [N, 3, 2] (offset, size) in
  bytes of the image, caption and metadata members, (-1, 0) when absent; skipped: {reason: [key]}.
  """
  keys: np.ndarray
  formats: np.ndarray
  spans: np.ndarray
  skipped: dict[str, list[str]]


def _split_name(name: str) -> tuple[str, str]:
  """'dir/000123.jpg' -> ('dir/000123', 'jpg'); extensions after the first dot of the basename."""
  folder, _, base = name.rpartition("/")
  stem, _, ext = base.partition(".")
  return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _has_end_marker(path: pathlib.Path, end: int, file_size: int) -> bool:
  """Whether the archive ends with its two zero blocks after byte `end` (a complete tar)."""
  if file_size - end < 2 * _BLOCK:
    return False
  with open(path, "rb") as f:
    f.seek(end)
    return not f.read(2 * _BLOCK).strip(b"\0")


def _scan(path: pathlib.Path, file_size: int) -> tuple[list, str | None, bool]:
  """Members grouped by consecutive key: ([(key, {ext: (offset, size)})], key of a member cut by the
  end of the file or None, whether the archive ends properly)."""
  groups: list[tuple[str, dict[str, tuple[int, int]]]] = []
  end = 0
  try:
    with tarfile.open(path, mode="r:") as tar:
      while (member := tar.next()) is not None:
        if member.offset_data + member.size > file_size:
          return groups, _split_name(member.name)[0], False
        end = member.offset_data + -(-member.size // _BLOCK) * _BLOCK
        if not member.isfile():
          continue
        key, ext = _split_name(member.name)
        if not groups or groups[-1][0] != key:
          groups.append((key, {}))
        groups[-1][1].setdefault(ext, (member.offset_data, member.size))
  except tarfile.ReadError:  # a header cut short or garbled (tarfile stops quietly on some cuts)
    return groups, None, False
  return groups, None, _has_end_marker(path, end, file_size)


def index_shard(path: pathlib.Path) -> ShardIndex:
  """One pass over the tar headers of `path` (data is skipped by seeking, never read).

  A shard cut short (by a crashed writer or a partial copy) keeps every sample before the cut; the
  sample at the cut is skipped as 'truncated_tar' since its remaining members may be lost (the
  shard's path stands for it when the cut precedes every sample). Samples without an image member
  are skipped as 'no_image'.
  """
  groups, cut_key, complete = _scan(path, path.stat().st_size)
  if cut_key is None and not complete:  # cut between members: the last sample may miss some
    cut_key = groups[-1][0] if groups else str(path)
  if groups and groups[-1][0] == cut_key:
    groups.pop()
  skipped = collections.defaultdict(list, {"truncated_tar": [cut_key]} if cut_key else {})
  keys, formats, spans = [], [], []
  for key, members in groups:
    image_ext = next((ext for ext in IMAGE_FORMATS if ext in members), None)
    if image_ext is None:
      skipped["no_image"].append(key)
      continue
    keys.append(key)
    formats.append(IMAGE_FORMATS.index(image_ext))
    spans.append([members[image_ext], members.get("txt", (-1, 0)), members.get("json", (-1, 0))])
  return ShardIndex(keys=np.array(keys, dtype=str), formats=np.array(formats, dtype=np.uint8),
                    spans=np.array(spans, dtype=np.int64).reshape(-1, 3, 2), skipped=dict(skipped))


def _cache_file(path: pathlib.Path, cache_dir: pathlib.Path) -> pathlib.Path:
  """Cache file name keyed by the shard's absolute path, size and modification time."""
  stat = path.stat()
  fingerprint = f"{_INDEX_VERSION}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
  return cache_dir / f"{path.stem}-{hashlib.sha1(fingerprint.encode()).hexdigest()[:16]}.npz"


def load_or_index_shard(path: pathlib.Path, cache_dir: pathlib.Path | None) -> ShardIndex:
  """`index_shard(path)`, read from / written to `cache_dir` when given."""
  if cache_dir is None:
    return index_shard(path)
  cache = _cache_file(path, cache_dir)
  if cache.is_file():
    with np.load(cache) as stored:
      return ShardIndex(keys=stored["keys"], formats=stored["formats"], spans=stored["spans"],
                        skipped=json.loads(str(stored["skipped"])))
  index = index_shard(path)
  cache_dir.mkdir(parents=True, exist_ok=True)
  partial = cache.with_suffix(f".{os.getpid()}.tmp.npz")
  np.savez(partial, keys=index.keys, formats=index.formats, spans=index.spans, skipped=json.dumps(index.skipped))
  partial.replace(cache)  # atomic: concurrent processes never read a half-written index
  return index


class TarShardSource:
  """grain RandomAccessDataSource over the samples of tar shards.

  Record i: {'key': str, 'image_bytes': bytes, 'image_format': str ('jpg', 'png', ...),
  'caption': str (the .txt member, else the .json's 'caption', else None), 'metadata': dict ({} without or with
  an invalid .json)}.
  Picklable: file descriptors are opened lazily in each process and never pickled. Reads are
  positional (`os.pread`), so threads can share a descriptor.
  """

  def __init__(self, patterns: str | list[str], cache_dir: str | os.PathLike | None = None):
    self.shards, missing = expand_shards(patterns)
    cache = None if cache_dir is None else pathlib.Path(cache_dir)
    indices = [load_or_index_shard(path, cache) for path in self.shards]
    self._keys = np.concatenate([i.keys for i in indices])
    self._formats = np.concatenate([i.formats for i in indices])
    self._spans = np.concatenate([i.spans for i in indices])
    self._shard_of = np.repeat(np.arange(len(indices), dtype=np.int32), [len(i.keys) for i in indices])
    # {reason: [key]} of the samples left out of the index.
    self.skipped = collections.defaultdict(list, {"missing_shard": missing} if missing else {})
    for index in indices:
      for reason, keys in index.skipped.items():
        self.skipped[reason].extend(keys)
    self.skipped = dict(self.skipped)
    # Shards cut short (a crashed writer): the samples after the cut are lost, and a tar cannot say how many.
    self.truncated_shards = [path for path, index in zip(self.shards, indices) if "truncated_tar" in index.skipped]
    self._fds: dict[int, int] = {}
    self._pid = os.getpid()

  def __len__(self) -> int:
    return len(self._keys)

  def __repr__(self) -> str:
    return f"TarShardSource({len(self.shards)} shards, {len(self)} samples)"

  def __getstate__(self):
    return {**self.__dict__, "_fds": {}}

  def _read(self, shard: int, span: np.ndarray) -> bytes | None:
    offset, size = int(span[0]), int(span[1])
    if offset < 0:
      return None
    if self._pid != os.getpid():  # forked: descriptors are shared with the parent, reopen
      self._fds, self._pid = {}, os.getpid()
    if shard not in self._fds:
      self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
    return os.pread(self._fds[shard], size, offset)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    shard, spans = int(self._shard_of[index]), self._spans[index]
    caption = self._read(shard, spans[_CAPTION])
    metadata = _parse_metadata(self._read(shard, spans[_METADATA]))
    if caption is not None:
      caption = caption.decode("utf-8", errors="replace").strip()
    elif isinstance(metadata.get("caption"), str):   # img2dataset also writes the caption into the .json
      caption = metadata["caption"].strip()
    return {"key": str(self._keys[index]),
            "image_bytes": self._read(shard, spans[_IMAGE]),
            "image_format": IMAGE_FORMATS[self._formats[index]],
            "caption": caption, "metadata": metadata}

  def __del__(self):
    if getattr(self, "_pid", None) == os.getpid():
      for fd in self._fds.values():
        os.close(fd)


def _parse_metadata(data: bytes | None) -> dict:
  if data is None:
    return {}
  try:
    parsed = json.loads(data)
  except ValueError:  # also UnicodeDecodeError
    return {}
  return parsed if isinstance(parsed, dict) else {}
