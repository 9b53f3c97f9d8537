"""The layout tokenizer: class token + quantized coordinates per object, round trips within half a level, and
refuses unknown class ids, bad boxes and too many objects by name; the layout conditioner's optional box map."""

import numpy as np
import pytest

from latent_diffusion.conditioning import LayoutTokenizer


def test_tokens_round_trip_within_half_a_level():
  tokenizer = LayoutTokenizer(num_classes=12, bins=32, max_objects=3)
  assert len(tokenizer) == 3 + 12 + 32 and tokenizer.model_max_length == 17
  rng = np.random.default_rng(0)
  for _ in range(100):
    count = int(rng.integers(0, 4))
    corners = np.sort(rng.uniform(0, 1, (count, 2, 2)), axis=1)               # [n, (min, max), (x, y)]
    boxes = corners.transpose(0, 2, 1).reshape(count, 4)[:, [0, 2, 1, 3]]       # (x0, y0, x1, y1)
    labels = rng.integers(0, 12, count)
    padded_boxes = np.concatenate([boxes, np.zeros((3 - count, 4))])
    padded_labels = np.concatenate([labels, -np.ones(3 - count, int)])
    tokens = tokenizer.encode(padded_boxes, padded_labels)
    assert tokens.shape == (17,) and tokens.dtype == np.int32
    assert tokens[0] == tokenizer.BOS and tokens[1 + 5 * count] == tokenizer.EOS
    assert np.all(tokens[2 + 5 * count:] == tokenizer.PAD)
    assert np.all(tokens[1:1 + 5 * count].reshape(count, 5)[:, 0] < 15)            # class tokens 3..14
    assert np.all(tokens[1:1 + 5 * count].reshape(count, 5)[:, 1:] >= 15)           # coordinate tokens 15..46
    decoded_boxes, decoded_labels = tokenizer.decode(tokens)
    np.testing.assert_array_equal(decoded_labels, labels)
    assert np.abs(decoded_boxes - boxes).max(initial=0) <= 0.5 / 31 + 1e-6


def test_empty_layout_and_order():
  tokenizer = LayoutTokenizer(num_classes=2, bins=4, max_objects=2)
  np.testing.assert_array_equal(tokenizer.encode(np.zeros((0, 4)), []), [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
  two = tokenizer.encode([[0, 0, 1, 1], [0, 1 / 3, 2 / 3, 1]], [1, 0])
  np.testing.assert_array_equal(two, [1, 4, 5, 5, 8, 8, 3, 5, 6, 7, 8, 2])


def test_bad_layouts_are_named():
  tokenizer = LayoutTokenizer(num_classes=12, bins=32, max_objects=2)
  with pytest.raises(ValueError, match=r"layout 3: object 1 has class id 12, not a class of this model \(0\.\.11"):
    tokenizer.encode([[0, 0, .5, .5], [.5, .5, 1, 1]], [4, 12], "layout 3")
  with pytest.raises(ValueError, match="object 0 has class id -2"):
    tokenizer.encode([[0, 0, .5, .5]], [-2])
  with pytest.raises(ValueError, match=r"object 0 has box \[0\.5, 0\.0, 0\.25, 1\.0\]; expected \(x0, y0, x1, y1\)"):
    tokenizer.encode([[.5, 0, .25, 1]], [0])
  with pytest.raises(ValueError, match="3 objects; this model takes at most 2"):
    tokenizer.encode(np.zeros((3, 4)), [0, 1, 2])
  with pytest.raises(ValueError, match="2 boxes for 1 class labels"):
    tokenizer.encode(np.zeros((2, 4)), [0])


def test_box_map_covers_each_box_by_class():
  """The optional box map: per latent cell, the covered fraction of each class's boxes; zeros as the null."""
  from types import SimpleNamespace

  from latent_diffusion.conditioning import LayoutConditioner, trained_encoder

  tokenizer = LayoutTokenizer(num_classes=3, bins=32, max_objects=2)
  sizes = SimpleNamespace(width=16, layers=1, heads=2, mlp_ratio=2)
  encoder = trained_encoder(len(tokenizer), tokenizer.model_max_length, sizes, "float32")
  conditioner = LayoutConditioner(tokenizer, encoder, box_map=True, image_size=(32, 16)).with_first_stage(
      SimpleNamespace(downsampling_factor=4), None, None)
  # Grid 8 x 4 cells of 4 x 4 pixels; box 0 (class 2) covers pixels x 2..10, y 0..8; box 1 (class 0) is one cell.
  boxes, labels = np.array([[2 / 16, 0, 10 / 16, 8 / 32], [12 / 16, 28 / 32, 1, 1]]), np.array([2, 0])
  inputs = conditioner.request_inputs({"boxes": boxes[None], "box_labels": labels[None]}, 1)
  box_map = inputs["box_map"][0]
  assert box_map.shape == (8, 4, 3) and conditioner.request_grid(inputs) == (8, 4)
  expected = np.zeros((8, 4, 3), np.float32)
  expected[0:2, :, 2] = [0.5, 1.0, 0.5, 0.0]
  expected[7, 3, 0] = 1.0
  np.testing.assert_allclose(box_map, expected, atol=1e-6)
  prepared = conditioner.prepare({"boxes": boxes, "box_labels": labels})
  np.testing.assert_array_equal(prepared["box_map"], box_map)
  np.testing.assert_array_equal(prepared["tokens"], tokenizer.encode(boxes, labels))
  null = conditioner.null_request_inputs({}, 2)
  assert null["box_map"].shape == (2, 8, 4, 3) and not null["box_map"].any()
  with pytest.raises(ValueError, match="object 1 has class id 3"):
    conditioner.request_inputs({"boxes": boxes[None], "box_labels": np.array([[2, 3]])}, 1)
