"""The procedural shapes data set (and the photo crops): deterministic from the seed, any resolution, and its
ground truth (segmentation, boxes, classes, captions) matches the pixels exactly."""

import ml_collections
import numpy as np

from latent_diffusion import data
from latent_diffusion.data import photos, shapes
from tests.conftest import tiny_config


def shapes_config(*overrides):
  return tiny_config("data.name=shapes", "autoencoder.model.in_channels=3", *overrides).data


def test_examples_are_deterministic_and_differ():
  a, b = data.make_dataset(shapes_config(), "train"), data.make_dataset(shapes_config(), "train")
  for i in range(5):
    for name in ("image", "segmentation", "boxes", "box_labels"):
      np.testing.assert_array_equal(a[i][name], b[i][name])
    assert a[i]["caption"] == b[i]["caption"]
  assert not np.array_equal(a[0]["image"], a[1]["image"])
  other_seed = data.make_dataset(shapes_config("data.shapes.seed=1"), "train")
  assert not np.array_equal(a[0]["image"], other_seed[0]["image"])
  val = data.make_dataset(shapes_config(), "val")
  assert len(val) == 297 and not np.array_equal(a[0]["image"], val[0]["image"])


def test_ground_truth_matches_pixels():
  palette = np.array(list(shapes.COLOURS.values()), np.float32)
  dataset = data.make_dataset(shapes_config("data.image_size=48"), "train")
  counts = np.zeros(shapes.NUM_OBJECT_CLASSES, int)
  for i in range(200):
    example = dataset[i]
    pixels = (example["image"] + 1.0) * 127.5                                   # back to 0..255
    seg, boxes, labels = example["segmentation"], example["boxes"], example["box_labels"]
    assert pixels.shape == (48, 48, 3) and seg.shape == (48, 48)
    objects = labels >= 0
    assert 1 <= objects.sum() <= 3 and np.all(labels[objects.sum():] == -1)      # padding after the objects
    # Object pixels are exactly their colour; background pixels are no object colour (greys at least 40 away).
    np.testing.assert_allclose(pixels[seg > 0], palette[seg[seg > 0] - 1], atol=1e-3)
    distance = np.linalg.norm(pixels[seg == 0][:, None] - palette[None], axis=-1)
    assert distance.min() > 40
    covered = np.zeros_like(seg, bool)
    for box, label in zip(boxes[objects], labels[objects]):
      shape, colour = shapes.shape_and_colour(int(label))
      counts[label] += 1
      x0, y0, x1, y1 = (int(round(v * 48)) for v in box)
      inside = seg[y0:y1, x0:x1] == 1 + colour
      # The box is tight: the object's colour touches all four sides, and nothing of the object is outside it.
      assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
      fill = inside.mean()                 # pi / 4 for a circle, 1 / 2 for a triangle; small ones drawn coarser
      expected = {"square": (0.99, 1.0), "circle": (0.7, 0.9), "triangle": (0.4, 0.62)}[shapes.SHAPES[shape]]
      assert expected[0] <= fill <= expected[1], (shapes.SHAPES[shape], fill)
      assert not covered[y0:y1, x0:x1].any()                                     # boxes are disjoint
      covered[y0:y1, x0:x1] = True
      assert shapes.describe(int(label)) in example["caption"]
    assert np.all(seg[~covered] == 0)                                            # no object pixel outside the boxes
  assert counts.min() > 0                                                        # every class occurs


def test_the_same_example_at_twice_the_size():
  small, large = (data.make_dataset(shapes_config(f"data.image_size={s}"), "val") for s in (32, 64))
  for i in range(20):
    a, b = small[i], large[i]
    np.testing.assert_array_equal(a["box_labels"], b["box_labels"])
    assert a["caption"] == b["caption"]
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1.01 / 32)
    # Downsampled 2x by majority, the large map is the small one except along edges.
    agreement = np.mean(b["segmentation"][::2, ::2] == a["segmentation"])
    assert agreement > 0.93


def test_photo_crops_are_deterministic_and_hold_out_whole_photos():
  assert not set(photos.PHOTOS["train"]) & set(photos.PHOTOS["val"])
  config = ml_collections.ConfigDict(dict(name="photo_crops", image_size=32, image_width=None, val_examples=10,
                                          photo_crops=dict(examples=20, seed=0, max_shrink=6.0)))
  a, b = data.make_dataset(config, "train"), data.make_dataset(config, "train")
  assert len(a) == 20 and len(data.make_dataset(config, "val")) == 10
  np.testing.assert_array_equal(a[3]["image"], b[3]["image"])
  crops = np.stack([a[i]["image"] for i in range(20)])
  assert crops.shape == (20, 32, 32, 3) and crops.min() >= -1 and crops.max() <= 1
  assert crops.std(axis=(1, 2, 3)).min() > 0.02                                 # real content, not flat patches
