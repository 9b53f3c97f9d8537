"""The sample_photos data set (real photos from scikit-image / scikit-learn) and the declared data options."""

import numpy as np
import pytest
import skimage.data
import skimage.io

from latent_diffusion import configuration, data
from latent_diffusion.data import sample_photos
from tests.conftest import data_config


def test_training_crops_and_validation_tiles_come_from_disjoint_photos():
  config = data_config(name="sample_photos", image_size=32, flip=True, seed=1,
                       sample_photos=dict(train=("astronaut", "china"), val=("coffee",), crops_per_photo=5))
  train, val = data.make_dataset(config, "train"), data.make_dataset(config, "val")
  assert len(train) == 10 and len(val) == (400 // 32) * (600 // 32)
  crops = np.stack([example["image"] for example in train])
  assert crops.shape == (10, 32, 32, 3) and crops.min() >= -1.0 and crops.max() <= 1.0
  np.testing.assert_array_equal(crops, np.stack([example["image"] for example in data.make_dataset(config, "train")]))
  astronaut = skimage.data.astronaut().astype(np.float32) / 127.5 - 1.0
  # Crop 0 is a (possibly mirrored) window of the astronaut photo at its own resolution.
  windows = np.lib.stride_tricks.sliding_window_view(astronaut, (32, 32, 3))[:, :, 0]
  found = [np.any(np.all(windows == c, axis=(2, 3, 4))) for c in (crops[0], crops[0][:, ::-1])]
  assert any(found)
  np.testing.assert_array_equal(val[0]["image"], skimage.data.coffee()[:32, :32].astype(np.float32) / 127.5 - 1.0)
  other_seed = data.make_dataset(data_config(**{**config.to_dict(), "seed": 2}), "train")
  assert not np.array_equal(crops[0], other_seed[0]["image"])


def test_photo_errors_are_clear():
  with pytest.raises(ValueError, match=r"Unknown sample photo\(s\) \['lena'\].*known: \['astronaut'"):
    data.make_dataset(data_config(name="sample_photos", sample_photos=dict(val=("lena",))), "val")
  with pytest.raises(ValueError, match=r"smaller than the 512x64 crops"):
    sample_photos.RandomCrop(sample_photos.load_photos(("chelsea",)), (512, 64), flip=False)


def test_every_data_option_is_a_command_line_key(tmp_path):
  """The image-source options are declared in configs/base.py, so the CLI accepts them (no hidden .get() keys)."""
  for name in ("cats", "dogs"):
    (tmp_path / name).mkdir()
    skimage.io.imsave(tmp_path / name / "a.png", skimage.data.chelsea()[:40, :60])
  config, _ = configuration.parse_config_args([
      "--config=configs/tiny.py", "--config.data.name=image_folder", f"--config.data.train_path={tmp_path}",
      f"--config.data.val_path={tmp_path}", "--config.data.crop=random", "--config.data.flip=true",
      "--config.data.min_size=30", "--config.data.max_aspect_ratio=2.0", "--config.data.index_cache_dir=/tmp/x",
      "--config.data.tfds_name=imagenet2012", "--config.data.tfds_data_dir=/tmp/tfds", "--config.data.seed=4"])
  examples = list(data.make_dataset(config.data, "train"))
  assert [e["label"] for e in examples] == [0, 1] and examples[0]["image"].shape == (16, 16, 3)
  config, _ = configuration.parse_config_args(["--config=configs/tiny.py", "--config.data.name=image_folder",
                                               f"--config.data.train_path={tmp_path}", "--config.data.min_size=41"])
  assert list(data.make_dataset(config.data, "train")) == []      # both 40-pixel images are too small
