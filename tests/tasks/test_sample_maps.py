"""The sampling CLI's condition maps (latent_diffusion.cli.sample): files -> request fields, one map for every image,
and clear refusals (a map the model does not read, a missing one, a segmentation file that holds no class ids).
The CLI end to end (an inpainting pipeline, a mask that does not fit its image): tests/weights/test_inpainting_pipeline.py.
"""

import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver
from PIL import Image

from latent_diffusion.cli import sample


@pytest.fixture(autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def test_maps_are_read_and_repeated(tmp_path):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 5, (12, 20)).astype(np.int32)
  np.save(tmp_path / "map.npy", ids)
  Image.fromarray(ids.astype(np.uint8), mode="L").save(tmp_path / "map.png")
  rgb = rng.integers(0, 256, (8, 6, 3)).astype(np.uint8)
  Image.fromarray(rgb).save(tmp_path / "small.png")
  mask = np.zeros((8, 6), np.uint8)
  mask[2:5, 1:4] = 255
  Image.fromarray(mask).save(tmp_path / "mask.png")
  for path in ("map.npy", "map.png"):
    with flagsaver.flagsaver(segmentation=str(tmp_path / path)):
      maps = sample.condition_maps({"segmentation"}, 3)
    assert maps["segmentation"].shape == (3, 12, 20) and np.array_equal(maps["segmentation"][2], ids)
  with flagsaver.flagsaver(low_res=str(tmp_path / "small.png")):
    low_res = sample.condition_maps({"low_res"}, 2)["low_res"]
  np.testing.assert_allclose(low_res[1], rgb / 127.5 - 1.0, atol=1e-6)
  with flagsaver.flagsaver(image=str(tmp_path / "small.png"), mask=str(tmp_path / "mask.png")):
    maps = sample.condition_maps({"text", "inpaint"}, 2)
  assert maps["image"].shape == (2, 8, 6, 3) and np.array_equal(maps["mask"][0], (mask > 127).astype(np.float32))


def test_maps_the_model_does_not_read_or_needs_are_named(tmp_path):
  np.save(tmp_path / "map.npy", np.zeros((8, 8), np.int32))
  with flagsaver.flagsaver(segmentation=str(tmp_path / "map.npy")):
    with pytest.raises(app.UsageError, match="--segmentation given, but this model is conditioned on low_res"):
      sample.condition_maps({"low_res"}, 1)
  with pytest.raises(app.UsageError, match="conditioned on 'inpaint': give --image and --mask"):
    sample.condition_maps({"inpaint"}, 1)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour.png")
  with flagsaver.flagsaver(segmentation=str(tmp_path / "colour.png")):
    with pytest.raises(app.UsageError, match="is a RGB image; give a one-channel PNG of class ids"):
      sample.condition_maps({"segmentation"}, 1)
  np.save(tmp_path / "floats.npy", np.zeros((8, 8), np.float32))
  with flagsaver.flagsaver(segmentation=str(tmp_path / "floats.npy")):
    with pytest.raises(app.UsageError, match=r"holds float32 of shape \(8, 8\); expected integer class ids"):
      sample.condition_maps({"segmentation"}, 1)
