"""Decoding and transforms of photo records, skip counting, determinism, resume, workers, class folders."""

import io
import pickle

import grain
import numpy as np
import pytest
from absl import flags
from ml_collections import ConfigDict
from PIL import Image

from latent_diffusion import data
from latent_diffusion.data import images
from latent_diffusion.data.image_folder import ImageFolderSource
from latent_diffusion.data.tar_shards import TarShardSource
from tests.data import photo_fixtures

SIZE = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  directory = tmp_path_factory.mktemp("shards")
  expected, skipped = photo_fixtures.write_shards(directory)
  return TarShardSource(str(directory / "{00000..00002}.tar")), expected, skipped


def _reference(pixels: np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size` (Pillow bicubic), centre crop, to [-1, 1]: what the pipeline must give."""
  height, width = pixels.shape[:2]
  scale = size / min(height, width)
  resized = np.asarray(Image.fromarray(pixels).resize((round(width * scale), round(height * scale)),
                                                      Image.Resampling.BICUBIC))
  top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  return resized[top:top + size, left:left + size].astype(np.float32) / 127.5 - 1


def _batches(dataset, seed, batch_size=4, workers=0):
  """The training loop's recipe (per-epoch shuffle, repeat, thread prefetch), batching after the
  None-dropping filter; with workers, records pass mp_prefetch before the filter so the order does
  not depend on the number of workers."""
  records = dataset.shuffle(seed).repeat().to_iter_dataset(grain.ReadOptions(num_threads=2), allow_nones=True)
  if workers:
    records = records.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(records.filter(images.is_kept).batch(batch_size, drop_remainder=True))


def test_every_encoding_decodes_to_its_rgb_pixels():
  rng = np.random.default_rng(1)
  photo = photo_fixtures.random_crop(photo_fixtures.photos()["astronaut"], rng)
  for _, encode in photo_fixtures.ENCODINGS:
    encoded, want, exact = encode(photo)
    got = images.decode_image(images.open_image(encoded))
    assert got.dtype == np.uint8 and got.shape == want.shape
    error = np.abs(got.astype(int) - want).mean()
    assert error == 0 if exact else error < 3.0, (encode.__name__, error)


def test_exif_orientation_is_applied():
  exif = Image.Exif()
  exif[0x0112] = 6  # rotated 90 degrees clockwise
  out = io.BytesIO()
  Image.new("RGB", (40, 20), (200, 10, 10)).save(out, "JPEG", exif=exif)
  assert images.decode_image(images.open_image(out.getvalue())).shape == (40, 20, 3)


@pytest.mark.parametrize("draft", [False, True])
def test_good_samples_equal_their_source_crops(shards, draft):
  source, expected, _ = shards
  encoded = {source[i]["key"]: source[i]["image_bytes"] for i in range(len(source))}
  examples = list(images.image_dataset(source, image_size=SIZE, text=True, draft=draft))
  assert [e["key"] for e in examples] == list(expected)
  for example in examples:
    want = expected[example["key"]]
    assert example["caption"] == want.caption
    assert example["image"].shape == (SIZE, SIZE, 3) and example["image"].dtype == np.float32
    error = np.abs(example["image"] - _reference(want.pixels, SIZE)).mean() * 127.5  # in 8-bit steps
    # 4:2:0 JPEG at quality 95 loses up to ~5 steps on busy crops; draft decoding adds a little blur.
    assert error == 0 if want.exact else error < 6.0, (example["key"], error)
    if not want.exact and not draft:  # exactly Pillow's own decoding of the stored bytes
      pillow = np.asarray(Image.open(io.BytesIO(encoded[example["key"]])).convert("RGB"))
      assert np.array_equal(example["image"], _reference(pillow, SIZE))


def test_corrupt_records_are_dropped_and_counted_once(shards):
  source, expected, skipped = shards
  skips = images.SkipCounter()
  dataset = images.image_dataset(source, image_size=SIZE, skips=skips)
  assert sum(1 for _ in dataset.repeat(2)) == 2 * len(expected)
  assert skips.counts() == {reason: len(keys) for reason, keys in sorted(skipped.items())}
  assert all(skips.keys(reason) == keys for reason, keys in skipped.items())
  with pytest.raises(ValueError, match="can not follow `MapDataset.filter`"):
    dataset.batch(2)  # batch after to_iter_dataset, where skipped records are gone


def test_size_and_aspect_filters(shards):
  source, expected, _ = shards
  skips = images.SkipCounter()
  examples = list(images.image_dataset(source, image_size=SIZE, min_size=60, max_aspect_ratio=1.5, skips=skips))
  shapes = {key: e.pixels.shape[:2] for key, e in expected.items()}
  small = {k for k, s in shapes.items() if min(s) < 60}
  elongated = {k for k, s in shapes.items() if min(s) >= 60 and max(s) > 1.5 * min(s)}
  assert small and elongated and skips.keys("too_small") == small and skips.keys("aspect_ratio") == elongated
  assert len(examples) == len(expected) - len(small) - len(elongated)


def test_skip_counter_pickles_with_its_counts():
  skips = images.SkipCounter("x")
  skips.skip("undecodable", "k1")
  skips.add({"no_image": ["k2", "k3"]})
  clone = pickle.loads(pickle.dumps(skips))
  clone.skip("undecodable", "k1")
  assert clone.counts() == {"no_image": 2, "undecodable": 1}


def test_random_crops_and_flips_are_seeded(shards):
  source = shards[0]

  def images_of(seed, crop="random"):
    dataset = images.image_dataset(source, image_size=SIZE, crop=crop, flip=True, seed=seed)
    return np.stack([e["image"] for e in dataset])
  first = images_of(0)
  assert np.array_equal(first, images_of(0))
  assert not np.array_equal(first, images_of(1))
  centred = images_of(0, crop="center")
  flipped = [np.array_equal(c[:, ::-1], f) and not np.array_equal(c, f)
             for c, f in zip(centred, images_of(1, "center"))]
  assert 0 < sum(flipped) < len(flipped)  # some flipped, some not: independent per record
  with pytest.raises(ValueError, match="Unknown crop 'corner'"):
    images.ResizeCrop(SIZE, crop="corner")


def test_iterator_state_resumes_the_same_batches(shards):
  dataset = images.image_dataset(shards[0], image_size=SIZE, crop="random", flip=True, text=True)
  batches = _batches(dataset, seed=5)
  seen = [next(batches)["key"] for _ in range(3)]
  state = batches.get_state()
  following = [next(batches) for _ in range(6)]  # crosses into the next (reshuffled) epoch
  resumed = _batches(dataset, seed=5)
  resumed.set_state(state)
  for want in following:
    got = next(resumed)
    assert list(got["key"]) == list(want["key"]) and np.array_equal(got["image"], want["image"])
  assert len({k for batch in seen for k in batch}) == 12


def test_worker_processes_give_the_same_batches_as_threads(shards):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads its absl flags when starting workers
  dataset = images.image_dataset(shards[0], image_size=SIZE, crop="random", flip=True, text=True)
  threads, workers = _batches(dataset, seed=2), _batches(dataset, seed=2, workers=2)
  try:
    for _ in range(6):
      want, got = next(threads), next(workers)
      assert list(got["key"]) == list(want["key"]) and np.array_equal(got["image"], want["image"])
  finally:
    workers.close()


def test_captions_are_tokenized_by_any_callable(shards):
  def tokenize(texts):
    return np.array([[len(t), t.count(" ")] for t in texts])
  example = next(iter(images.image_dataset(shards[0], image_size=SIZE, tokenize=tokenize, text=True)))
  assert example["tokens"].dtype == np.int32
  assert list(example["tokens"]) == [len(example["caption"]), example["caption"].count(" ")]
  with pytest.raises(ValueError, match=r"integer array \[1, L\]"):
    images.TokenizeCaption(lambda texts: np.zeros(3)).map({"caption": "x"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder") / "train"
  return root, photo_fixtures.write_class_folders(root)


def test_class_folders_give_sorted_labels_and_the_same_record_format(folder):
  root, expected = folder
  source = ImageFolderSource(root)
  assert source.classes == ["camera", "chelsea", "rocket"]
  records = [source[i] for i in range(len(source))]
  assert [r["key"] for r in records] == list(expected)  # notes.txt is not an image
  assert [(r["label"], r["caption"]) for r in records] == [(e.label, e.caption) for e in expected.values()]
  examples = list(images.image_dataset(source, image_size=SIZE))
  assert sorted(examples[0]) == ["image", "label"]
  for example, want in zip(examples, expected.values()):
    assert example["label"] == want.label and np.array_equal(example["image"], _reference(want.pixels, SIZE))


def test_class_folder_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    ImageFolderSource(tmp_path / "absent")
  with pytest.raises(ValueError, match="no class sub-directories"):
    ImageFolderSource(tmp_path)
  (tmp_path / "cat").mkdir()
  with pytest.raises(ValueError, match="No image files"):
    ImageFolderSource(tmp_path)


def test_configs_choose_the_source_by_name(shards, folder):
  source, expected, _ = shards
  pattern = str(source.shards[0].parent / "{00000..00002}.tar")
  config = ConfigDict(dict(name="tar_shards", image_size=SIZE, train_path=pattern, crop="random", flip=True, seed=3))
  examples = list(data.make_dataset(config, "train"))
  assert len(examples) == len(expected) and sorted(examples[0]) == ["caption", "image", "key"]
  assert {e["key"]: e["caption"] for e in examples} == {k: want.caption for k, want in expected.items()}
  folders = data.make_dataset(ConfigDict(dict(name="image_folder", image_size=SIZE, train_path=str(folder[0]))),
                              "train")
  assert [e["label"] for e in folders] == [e.label for e in folder[1].values()]
  with pytest.raises(ValueError, match=r"config.data.val_path is not set.*'tar_shards'"):
    data.make_dataset(config, "val")
