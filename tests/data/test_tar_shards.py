"""Webdataset tar shards (img2dataset layout): brace patterns, the sample index, skips, random access."""

import concurrent.futures
import io
import pickle
import tarfile

import grain
import pytest
from PIL import Image

from latent_diffusion.data import tar_shards
from latent_diffusion.data.tar_shards import TarShardSource, expand_shards
from tests.data import photo_fixtures
from tests.data.photo_fixtures import write_tar


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """(pattern, expected good samples, expected index-time and decode-time skips)."""
  directory = tmp_path_factory.mktemp("shards")
  expected, skipped = photo_fixtures.write_shards(directory)
  return str(directory / "{00000..00002}.tar"), expected, skipped


@pytest.fixture(scope="module")
def source(shards):
  return TarShardSource(shards[0])


def test_brace_patterns_expand_in_order_keeping_zero_padding(tmp_path):
  names = ["s008.tar", "s009.tar", "s010.tar", "a0.tar", "a1.tar", "b0.tar", "b1.tar", "plain.tar"]
  for name in names:
    (tmp_path / name).touch()
  found, missing = expand_shards([f"{tmp_path}/s{{008..010}}.tar", f"{tmp_path}/{{a,b}}{{0..1}}.tar",
                                  f"{tmp_path}/plain.tar"])
  assert [p.name for p in found] == names and not missing
  with pytest.raises(ValueError, match=r"Shard pattern.*Unbalanced braces.*ranges as"):
    expand_shards(f"{tmp_path}/s{{008..010.tar")


def test_missing_shards_are_reported_and_no_match_is_an_error(shards, tmp_path):
  directory = shards[0].rpartition("/")[0]
  found, missing = expand_shards(f"{directory}/{{00001..00004}}.tar")
  assert [p.name for p in found] == ["00001.tar", "00002.tar"]
  assert [m.rpartition("/")[2] for m in missing] == ["00003.tar", "00004.tar"]
  assert TarShardSource(f"{directory}/{{00001..00004}}.tar").skipped["missing_shard"] == missing
  with pytest.raises(FileNotFoundError, match=r"No shard file matches.*nothing"):
    expand_shards(str(tmp_path / "nothing{0..3}.tar"))


def test_index_keeps_every_intact_sample_in_order_and_counts_skips(source, shards):
  _, expected, skipped = shards
  keys = [source[i]["key"] for i in range(len(source))]
  decodable_later = skipped["undecodable"]  # in the index: only decoding can tell they are broken
  assert sorted(keys) == keys and len(keys) == len(set(keys))
  assert set(keys) == set(expected) | decodable_later
  assert {reason: set(k) for reason, k in source.skipped.items()} == {
      "no_image": skipped["no_image"], "truncated_tar": skipped["truncated_tar"]}


def test_records_carry_bytes_caption_and_metadata(source, shards):
  _, expected, _ = shards
  for i in range(len(source)):
    record = source[i]
    if record["key"] not in expected:
      continue
    want = expected[record["key"]]
    assert record["caption"] == want.caption and record["metadata"] == want.metadata
    image = Image.open(io.BytesIO(record["image_bytes"]))
    assert image.size == want.pixels.shape[1::-1]
    assert record["image_format"] == {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[image.format]


def test_missing_caption_and_bad_json_give_defaults(tmp_path):
  """No .txt: the .json's caption (img2dataset writes it there too), else None (counted by text conditioning)."""
  write_tar(tmp_path / "s.tar", [("a.png", b"x"), ("a.json", b"{not json"), ("b.webp", b"y"), ("b.json", b"[1]"),
                              ("b.txt", b" hi \n"), ("c.jpg", b"z"), ("c.json", b'{"caption": " from json "}')])
  source = TarShardSource(str(tmp_path / "s.tar"))
  assert [(r["key"], r["caption"], r["metadata"], r["image_format"]) for r in (source[0], source[1], source[2])] == [
      ("a", None, {}, "png"), ("b", "hi", {}, "webp"), ("c", "from json", {"caption": " from json "}, "jpg")]


def test_a_cut_between_samples_drops_only_the_last_one(tmp_path):
  members = [(f"{k}.{ext}", bytes(700)) for k in "abcd" for ext in ("jpg", "txt")]
  write_tar(tmp_path / "s.tar", members)
  with tarfile.open(tmp_path / "s.tar") as tar:
    header_of_c = tar.getmember("c.jpg").offset
  with open(tmp_path / "s.tar", "r+b") as f:
    f.truncate(header_of_c + 100)  # inside the header of c.jpg: c is unknown, b may lack members
  index = tar_shards.index_shard(tmp_path / "s.tar")
  assert list(index.keys) == ["a"] and index.skipped == {"truncated_tar": ["b"]}


def test_unreadable_shards_are_skipped_not_fatal(tmp_path):
  (tmp_path / "0.tar").write_bytes(b"this is not a tar file" * 100)
  (tmp_path / "1.tar").write_bytes(b"")
  write_tar(tmp_path / "2.tar", [("k.jpg", b"z")])
  source = TarShardSource(str(tmp_path / "{0..2}.tar"))
  assert len(source) == 1 and source[0]["key"] == "k"
  assert sorted(source.skipped["truncated_tar"]) == [str(tmp_path / "0.tar"), str(tmp_path / "1.tar")]


def test_index_cache_is_reused_until_the_shard_changes(tmp_path, monkeypatch):
  write_tar(tmp_path / "s.tar", [("a.jpg", b"1"), ("b.jpg", b"2")])
  first = TarShardSource(str(tmp_path / "s.tar"), cache_dir=tmp_path / "cache")

  def fail(path):
    raise AssertionError(f"re-indexed {path}")
  monkeypatch.setattr(tar_shards, "index_shard", fail)
  cached = TarShardSource(str(tmp_path / "s.tar"), cache_dir=tmp_path / "cache")
  assert [cached[i]["image_bytes"] for i in range(2)] == [first[i]["image_bytes"] for i in range(2)] == [b"1", b"2"]
  monkeypatch.undo()
  write_tar(tmp_path / "s.tar", [("c.jpg", bytes(20_000))])  # a new size (tars pad to 10 KiB records)
  assert TarShardSource(str(tmp_path / "s.tar"), cache_dir=tmp_path / "cache")[0]["key"] == "c"


def test_source_pickles_without_file_handles_and_reads_from_threads(source):
  source[0]  # opens a descriptor, which must not travel
  clone = pickle.loads(pickle.dumps(source))
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(lambda i: clone[i]["image_bytes"], list(range(len(source))) * 3))
  assert threaded == [source[i]["image_bytes"] for i in range(len(source))] * 3


def test_process_slices_cover_every_sample_exactly_once(source):
  dataset = grain.MapDataset.source(source)
  parts = [[r["key"] for r in dataset[index::2]] for index in range(2)]  # as process `index` of 2 takes it
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == [source[i]["key"] for i in range(len(source))]
  assert abs(len(parts[0]) - len(parts[1])) <= 1
