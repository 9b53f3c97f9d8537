"""TfdsSource over a tiny ImageNet-like TFDS data set prepared here as ArrayRecord from real photos.

The builder mirrors imagenet2012's features (JPEG 'image', ClassLabel 'label', Text 'file_name') and,
like it, stores the given encoded bytes unchanged, so one CMYK JPEG and two corrupt images (garbage,
cut in half) reach the pipeline as ImageNet's odd files would.
"""

import functools
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from latent_diffusion import data
from latent_diffusion.data import images
from latent_diffusion.data.tfds_source import TfdsSource
from tests.data import photo_fixtures
from tests.data.test_images import _reference

SIZE = 32
CLASSES = ("chelsea", "coffee", "rocket")
_, JPEG = photo_fixtures.ENCODINGS[0]  # quality-95 JPEG
_, CMYK_JPEG = photo_fixtures.ENCODINGS[3]


def _examples(split: str, per_class: int, seed: int) -> dict[str, tuple[bytes, photo_fixtures.Expected | None]]:
  """{file_name: (stored bytes, Expected or None for a corrupt image)} of one split."""
  rng = np.random.default_rng(seed)
  photos = photo_fixtures.photos()
  found = {}
  for label, name in enumerate(CLASSES):
    for i in range(per_class):
      encode = CMYK_JPEG if (label, i) == (1, 0) else JPEG
      encoded, pixels, _ = encode(photo_fixtures.random_crop(photos[name], rng))
      found[f"{split}_{name}_{i}.JPEG"] = encoded, photo_fixtures.Expected(pixels, False, name, {}, label)
  if split == "train":
    whole, _, _ = JPEG(photo_fixtures.random_crop(photos["astronaut"], rng))
    found["train_garbage.JPEG"] = b"\xff\xd8\xff\xe0" + rng.bytes(2000), None
    found["train_half.JPEG"] = whole[:len(whole) // 2], None
  return found


@functools.cache
def examples() -> dict[str, dict[str, tuple[bytes, photo_fixtures.Expected | None]]]:
  """{split: {file_name: (stored bytes, Expected or None)}}, built once and shared by builders and tests."""
  return {"train": _examples("train", per_class=3, seed=0), "validation": _examples("validation", 1, seed=1)}


class _LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder that downloads nothing (abstract: TFDS registers only its subclasses)."""

  VERSION = tfds.core.Version("1.0.0")
  # No checksums file to find next to the code: TFDS's search for one needs importlib_resources,
  # which is not installed here.
  code_path = None


class LdmTestImagenet(_LocalBuilder):
  """ImageNet's feature spec over examples() (TFDS name 'ldm_test_imagenet')."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=CLASSES),
        "file_name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in examples()}

  def _generate_examples(self, split):
    for file_name, (encoded, expected) in examples()[split].items():
      label = expected.label if expected else 0
      yield file_name, {"image": encoded, "label": label, "file_name": file_name}


class LdmTestUnlabelled(_LocalBuilder):
  """Images only: no label, no file name."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"image": tfds.features.Image()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for file_name, (encoded, _) in examples()["validation"].items():
      yield file_name, {"image": encoded}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  for builder in (LdmTestImagenet, LdmTestUnlabelled):
    builder(data_dir=directory, file_format="array_record").download_and_prepare()
  return directory


def test_records_carry_the_stored_bytes_labels_and_class_names(data_dir):
  source = TfdsSource("ldm_test_imagenet", "train", data_dir=data_dir)
  assert source.classes == list(CLASSES) and len(source) == len(examples()["train"])
  records = [source[i] for i in range(len(source))]
  assert {r["key"] for r in records} == set(examples()["train"])
  for record in records:
    encoded, expected = examples()["train"][record["key"]]
    assert record["image_bytes"] == encoded and record["metadata"] == {}
    if expected:
      assert record["label"].dtype == np.int32 and record["label"] == expected.label
      assert record["caption"] == CLASSES[expected.label]


def test_examples_decode_to_their_photos_and_corrupt_ones_are_counted(data_dir):
  skips = images.SkipCounter()
  dataset = images.image_dataset(TfdsSource("ldm_test_imagenet", "train", data_dir=data_dir), image_size=SIZE,
                                 text=True, skips=skips, draft=False)
  decoded = list(dataset)
  good = {key: expected for key, (_, expected) in examples()["train"].items() if expected}
  assert sorted(e["key"] for e in decoded) == sorted(good)
  assert skips.counts() == {"undecodable": 2} and skips.keys("undecodable") == {"train_garbage.JPEG", "train_half.JPEG"}
  for example in decoded:
    want = good[example["key"]]
    assert example["label"] == want.label and example["caption"] == want.caption
    error = np.abs(example["image"] - _reference(want.pixels, SIZE)).mean() * 127.5  # in 8-bit steps
    assert error < 6.0, (example["key"], error)  # quality-95 JPEG loss, as for the tar shards


def test_order_is_fixed_picklable_and_sliced_per_process(data_dir):
  source = TfdsSource("ldm_test_imagenet:1.0.0", "train", data_dir=data_dir)
  keys = [source[i]["key"] for i in range(len(source))]
  assert keys == [TfdsSource("ldm_test_imagenet", "train", data_dir=data_dir)[i]["key"] for i in range(len(source))]
  clone = pickle.loads(pickle.dumps(source))
  assert [clone[i]["key"] for i in range(len(clone))] == keys and clone[3]["image_bytes"] == source[3]["image_bytes"]
  dataset = images.image_dataset(source, image_size=SIZE, text=True)
  shares = [[e["key"] for e in dataset[process::2]] for process in range(2)]
  assert not set(shares[0]) & set(shares[1])
  assert sorted(shares[0] + shares[1]) == sorted(k for k in keys if examples()["train"][k][1])
  assert shares[0] == [k for k in keys[0::2] if examples()["train"][k][1]]


def test_split_specs_and_datasets_without_labels(data_dir):
  train = [TfdsSource("ldm_test_imagenet", "train", data_dir=data_dir)[i]["key"] for i in range(4)]
  sliced = TfdsSource("ldm_test_imagenet", "train[:4]", data_dir=data_dir)
  assert [sliced[i]["key"] for i in range(len(sliced))] == train
  both = TfdsSource("ldm_test_imagenet", "train[:4]+validation", data_dir=data_dir)
  assert len(both) == 4 + len(examples()["validation"])
  plain = TfdsSource("ldm_test_unlabelled", "train", data_dir=data_dir, label_key=None)
  assert [sorted(plain[i]) for i in range(2)] == [["caption", "image_bytes", "key", "metadata"]] * 2
  assert [plain[i]["key"] for i in range(2)] == ["train/0", "train/1"] and plain[0]["caption"] is None
  assert sorted(next(iter(images.image_dataset(plain, image_size=SIZE)))) == ["image"]


def test_config_chooses_tfds_with_the_split_as_path(data_dir):
  config = ConfigDict(dict(name="tfds", tfds_name="ldm_test_imagenet", tfds_data_dir=str(data_dir), image_size=SIZE,
                           train_path="train", val_path="validation", tfds_caption_key="file_name"))
  val = list(data.make_dataset(config, "val"))
  assert sorted(e["label"] for e in val) == [0, 1, 2] and val[0]["image"].shape == (SIZE, SIZE, 3)
  assert sorted(e["caption"] for e in val) == sorted(examples()["validation"])     # a Text feature as the caption
  assert len(list(data.make_dataset(config, "train"))) == len(examples()["train"]) - 2


def test_errors_are_clear(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'ldm_test_nothing' is not prepared under .*nothing.*tfds build"):
    TfdsSource("ldm_test_nothing", "train", data_dir=data_dir)
  with pytest.raises(FileNotFoundError, match=r"(?s)'imagenet2012' is not prepared.*manual download.*ILSVRC2012"):
    TfdsSource("imagenet2012", "train", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"no split 'test'; available splits: \['train', 'validation'\]"):
    TfdsSource("ldm_test_imagenet", "test", data_dir=data_dir)
  with pytest.raises(ValueError, match=r"no Image feature 'photo'; its features: .*'image': 'Image'"):
    TfdsSource("ldm_test_imagenet", "train", data_dir=data_dir, image_key="photo")
  with pytest.raises(ValueError, match="no ClassLabel feature 'label'"):
    TfdsSource("ldm_test_unlabelled", "train", data_dir=data_dir)
  with pytest.raises(ValueError, match="needs a TFDS data set name"):
    data.make_dataset(ConfigDict(dict(name="tfds", image_size=SIZE, train_path="train", tfds_caption_key=None)),
                      "train")
  LdmTestUnlabelled(data_dir=tmp_path, file_format="tfrecord").download_and_prepare()
  with pytest.raises(ValueError, match=r"stored as \['tfrecord'\], not ArrayRecord.*file_format='array_record'"):
    TfdsSource("ldm_test_unlabelled", "train", data_dir=tmp_path, label_key=None)
