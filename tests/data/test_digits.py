"""The built-in digits data set and the grain batch pipeline of the training loop."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from latent_diffusion import data
from latent_diffusion.training.loop import batch_iterator


@pytest.fixture(scope="module")
def data_config():
  return ConfigDict(dict(name="digits", image_size=16, batch_size=32, val_examples=297, num_classes=10))


def test_splits_are_disjoint_stratified_and_normalised(data_config):
  train = list(data.make_dataset(data_config, "train"))
  val = list(data.make_dataset(data_config, "val"))
  assert len(train) == 1797 - 297 and len(val) == 297
  image = train[0]["image"]
  assert image.shape == (16, 16, 1) and image.dtype == np.float32
  pixels = np.stack([e["image"] for e in train])
  assert pixels.min() == pytest.approx(-1.0) and pixels.max() <= 1.0
  val_counts = np.bincount([e["label"] for e in val], minlength=10)
  assert val_counts.min() >= 28 and val_counts.max() <= 31  # stratified: ~29.7 per class
  # No validation image is also a training image.
  train_keys = {e["image"].tobytes() for e in train}
  assert sum(e["image"].tobytes() in train_keys for e in val) <= 2  # the raw set has a few exact duplicates


def test_upsampling_preserves_the_original_digit(data_config):
  from sklearn.datasets import load_digits
  images, labels = data.load_digits_split("train", 16, 297)
  # 2x2 average pooling of the bilinear upsample is nearest to an original 8x8 image of its class.
  pooled = ((images[:20, ..., 0] + 1) / 2).reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4))
  digits = load_digits()
  distance = np.abs(digits.images[None] / 16.0 - pooled[:, None]).mean(axis=(2, 3))  # [20, 1797]
  assert (distance.min(axis=1) < 0.1).all()
  assert np.array_equal(digits.target[distance.argmin(axis=1)], labels[:20])


def test_unknown_names_fail_clearly(data_config):
  with pytest.raises(ValueError, match="Unknown data set 'mnist'.*config.data.name.*digits"):
    data.make_dataset(ConfigDict(dict(data_config.to_dict(), name="mnist")), "train")
  with pytest.raises(ValueError, match="Unknown split 'test'"):
    data.make_dataset(data_config, "test")


def test_batches_reshuffle_every_epoch_and_resume_exactly(data_config):
  dataset = data.from_arrays({"x": np.arange(10), "y": np.arange(10) * 2})
  it = batch_iterator(dataset, 5, seed=3)
  epoch1 = np.concatenate([next(it)["x"] for _ in range(2)])
  state = it.get_state()
  epoch2 = np.concatenate([next(it)["x"] for _ in range(2)])
  assert sorted(epoch1) == sorted(epoch2) == list(range(10))
  assert not np.array_equal(epoch1, epoch2)
  resumed = batch_iterator(dataset, 5, seed=3)
  resumed.set_state(state)
  assert np.array_equal(np.concatenate([next(resumed)["x"] for _ in range(2)]), epoch2)
  batch = next(it)
  assert np.array_equal(batch["y"], batch["x"] * 2)  # fields stay aligned


def test_from_arrays_rejects_ragged_columns():
  with pytest.raises(ValueError, match="different lengths"):
    data.from_arrays({"a": np.zeros(3), "b": np.zeros(4)})
