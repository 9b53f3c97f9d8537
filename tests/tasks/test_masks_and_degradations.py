"""Random inpainting masks (coverage statistics; object masks inside the chosen box) and super-resolution
degradations (parity with torch's antialiased bicubic, which reproduces Pillow's; blur against a plain NumPy
Gaussian; per-step noise levels), and residual super-resolution's targets (host) and pixels (device), and its
autoencoder stage's data."""

import jax
import numpy as np
import pytest
import torch

from latent_diffusion import data
from latent_diffusion.conditioning import InpaintConditioner, LowResConditioner, masks
from latent_diffusion.data import degradations
from latent_diffusion.training import autoencoder
from tests.conftest import tiny_config


def test_mask_coverage_statistics():
  options = masks.MaskOptions(full_prob=0.1, empty_prob=0.05)
  draw = jax.jit(masks.random_masks, static_argnums=(1, 2, 3, 4))          # as in the train step: compiled
  drawn = np.asarray(draw(jax.random.key(0), 4000, 32, 32, options))[..., 0]
  assert set(np.unique(drawn)) == {0.0, 1.0}
  coverage = drawn.mean(axis=(1, 2))
  full, empty = coverage == 1.0, coverage == 0.0
  assert abs(full.mean() - 0.1) < 0.015 and abs(empty.mean() - 0.05) < 0.012, (full.mean(), empty.mean())
  partial = coverage[~full & ~empty]
  # Boxes and strokes (never nothing): about a fifth of the image on average, from a sliver to about half of it.
  assert 0.15 < partial.mean() < 0.3 and np.percentile(partial, 5) > 0.02 and np.percentile(partial, 99) > 0.4
  # Every pixel is masked about as often (no corner the generator never reaches), and masks are not all alike.
  per_pixel = drawn[~full & ~empty].mean(axis=0)
  assert per_pixel.min() > 0.05 and per_pixel.max() < 0.45
  assert len({m.tobytes() for m in drawn[~full & ~empty]}) >= 0.995 * (~full & ~empty).sum()
  # The same options at another size look the same: sizes are fractions of the shorter side, so a 64 x 96 image
  # (1.5 squares of that side) has the masked area of a 32 x 32 one in units of side^2.
  large = np.asarray(draw(jax.random.key(1), 1000, 64, 96, options))
  large_coverage = large.mean(axis=(1, 2, 3))
  assert abs(1.5 * large_coverage[large_coverage % 1 != 0].mean() - partial.mean()) < 0.02


def test_object_masks_cover_one_side_of_one_real_box():
  options = masks.MaskOptions(full_prob=0.1, empty_prob=0.05, object_prob=0.5, object_part=(0.3, 0.7))
  n, side = 4000, 32
  a, b = (0.1, 0.2, 0.4, 0.6), (0.55, 0.3, 0.9, 0.8)                # two objects with an empty row between them
  boxes = np.zeros((n, 3, 4), np.float32)
  boxes[: n // 2, 0], boxes[: n // 2, 2] = a, b                       # the second half of the batch has no object
  draw = jax.jit(masks.random_masks, static_argnums=(1, 2, 3, 4))
  drawn = np.asarray(draw(jax.random.key(0), n, side, side, options, boxes))[..., 0].astype(bool)
  centre = (np.arange(side) + 0.5) / side

  def in_box(box):
    x0, y0, x1, y1 = box
    return ((centre[None, :] >= x0) & (centre[None, :] < x1)) & ((centre[:, None] >= y0) & (centre[:, None] < y1))

  def object_side(mask, box):
    """(side 0..3 = left, right, top, bottom, fraction of the box covered) if the mask is that part of the box."""
    inside = in_box(box)
    if not mask.any() or (mask & ~inside).any():
      return None, 0.0
    part = mask[inside.any(1)][:, inside.any(0)]                                 # the box's pixels
    for axis, sides in ((0, (0, 1)), (1, (2, 3))):                             # whole columns, then whole rows
      full, touched = part.all(axis), part.any(axis)
      if np.array_equal(full, touched):
        k = int(full.sum())
        for kind, expected in zip(sides, (np.arange(len(full)) < k, np.arange(len(full)) >= len(full) - k)):
          if np.array_equal(full, expected):
            return kind, full.mean()
    return None, 0.0

  with_objects = drawn[: n // 2]
  coverage = with_objects.mean(axis=(1, 2))
  partial = ~((coverage == 1.0) | (coverage == 0.0))
  found = [[object_side(m, box) for box in (a, b)] for m in with_objects[partial]]
  chosen = np.array([[s is not None for s, _ in f] for f in found])
  # Half of all masks are object masks (0.5 / 0.85 of the partial ones), one object at a time, both objects alike.
  assert abs(chosen.any(1).mean() - 0.5 / 0.85) < 0.03, chosen.any(1).mean()
  assert not chosen.all(1).any() and abs(chosen[:, 0].mean() - chosen[:, 1].mean()) < 0.04
  sides = np.array([s for f in found for s, _ in f if s is not None])
  fractions = np.array([c for f in found for s, c in f if s is not None])
  assert np.all(np.bincount(sides, minlength=4) / len(sides) > 0.2)          # every side, about a quarter each
  # object_part of the box's extent, up to one pixel of the 10 x 13 / 11 x 16 pixel boxes.
  assert fractions.min() >= 0.3 - 0.1 and fractions.max() <= 0.7 + 0.1, (fractions.min(), fractions.max())
  assert abs(fractions.mean() - 0.5) < 0.05
  # Without an object the masks are boxes and strokes, with the statistics of test_mask_coverage_statistics.
  none = drawn[n // 2:]
  none_coverage = none.mean(axis=(1, 2))
  assert abs((none_coverage == 1.0).mean() - 0.1) < 0.02 and abs((none_coverage == 0.0).mean() - 0.05) < 0.015
  assert 0.15 < none_coverage[(none_coverage > 0) & (none_coverage < 1)].mean() < 0.3


def test_object_masks_need_boxes_named():
  conditioner = InpaintConditioner(masks.MaskOptions(object_prob=0.3))
  with pytest.raises(ValueError, match=r"'img-7' has no 'boxes'.*object_prob = 0.3.*shapes"):
    conditioner.prepare({"key": "img-7", "image": np.zeros((8, 8, 3))})
  boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], np.float32)
  prepared = conditioner.prepare({"image": np.zeros((8, 8, 3)), "boxes": boxes, "box_labels": np.array([4, -1])})
  np.testing.assert_allclose(prepared["mask_boxes"], [[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]], rtol=1e-6)
  assert conditioner.batch_fields() == ("image", "mask_boxes") and InpaintConditioner().batch_fields() == ("image",)
  with pytest.raises(ValueError, match="pass the examples' boxes"):
    masks.random_masks(jax.random.key(0), 2, 8, 8, masks.MaskOptions(object_prob=0.3))
  with pytest.raises(ValueError, match="object_prob=0.9 must be >= 0 and sum to at most 1"):
    masks.MaskOptions(object_prob=0.9)


def test_bicubic_matches_torch_antialiased_bicubic():
  x = np.random.default_rng(0).uniform(-1, 1, (32, 48, 3)).astype(np.float32)
  ours = degradations.bicubic_downsample(x, 4)
  theirs = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(2, 0, 1)[None]), size=(8, 12),
                                           mode="bicubic", antialias=True)[0].numpy().transpose(1, 2, 0)
  assert ours.shape == (8, 12, 3)
  assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-5
  up = degradations.bicubic_upsample(ours, 4)
  theirs = torch.nn.functional.interpolate(torch.from_numpy(ours.transpose(2, 0, 1)[None]), size=(32, 48),
                                           mode="bicubic", antialias=True)[0].numpy().transpose(1, 2, 0)
  assert np.linalg.norm(up - theirs) / np.linalg.norm(theirs) <= 1e-5


def test_blur_matches_a_numpy_gaussian_and_degrade_composes():
  x = np.random.default_rng(1).uniform(-1, 1, (16, 16, 2)).astype(np.float32)
  sigma = 1.3
  radius = int(4.0 * sigma + 0.5)                                   # scipy's truncate=4
  kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  kernel /= kernel.sum()
  padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
  rows = np.stack([np.tensordot(padded[i:i + 2 * radius + 1], kernel, axes=(0, 0)) for i in range(16)])
  expected = np.stack([np.tensordot(rows[:, j:j + 2 * radius + 1], kernel, axes=(1, 0)) for j in range(16)], axis=1)
  np.testing.assert_allclose(degradations.gaussian_blur(x, sigma), expected, atol=1e-5)
  np.testing.assert_allclose(degradations.degrade(x, 4, sigma), degradations.bicubic_downsample(expected, 4), atol=1e-5)
  np.testing.assert_array_equal(degradations.degrade(x, 2), degradations.bicubic_downsample(x, 2))
  flat = np.full((16, 16, 3), 0.25, np.float32)
  np.testing.assert_allclose(degradations.degrade(flat, 4, 2.0), 0.25, atol=1e-6)


def test_low_res_noise_is_drawn_per_example_and_step():
  conditioner = LowResConditioner(3, noise_std=0.2, factor=4)
  low = np.zeros((2000, 4, 4, 3), np.float32)
  noisy = np.asarray(conditioner.train_inputs({"low_res": low}, jax.random.key(0))["low_res"])
  stds = noisy.reshape(2000, -1).std(axis=1)
  # std ~ U(0, 0.2) per example: mean 0.1, spread over the whole range; E[noise^2] = 0.2^2 / 3.
  assert abs(stds.mean() - 0.1) < 0.01 and stds.min() < 0.02 and stds.max() > 0.18
  assert abs(np.mean(noisy**2) - 0.04 / 3) < 0.001
  again = np.asarray(conditioner.train_inputs({"low_res": low}, jax.random.key(1))["low_res"])
  assert not np.allclose(noisy, again)


def test_residual_super_resolution_round_trip_host_residual_device_pixels():
  """What the first stage models in residual mode (host, Pillow) plus the device's bicubic upsampling (jax) gives the
  image back: the two bicubic upsamplers agree, so training targets and sampled images use one operator."""
  conditioner = LowResConditioner(3, blur_sigma=0.7, residual=True, factor=4)
  image = np.random.default_rng(2).uniform(-1, 1, (32, 24, 3)).astype(np.float32)
  residual = conditioner.first_stage_image(image)
  low = degradations.degrade(image, 4, 0.7)
  np.testing.assert_allclose(residual, image - degradations.bicubic_upsample(low, 4), atol=1e-6)
  rebuilt = np.asarray(conditioner.pixels(residual[None], {"low_res": low[None]}))[0]
  assert np.linalg.norm(rebuilt - image) / np.linalg.norm(image) <= 1e-5
  plain = LowResConditioner(3, factor=4)
  assert plain.first_stage_image(image) is image and plain.pixels(residual, {"low_res": low}) is residual


def test_the_autoencoder_stage_of_residual_super_resolution_trains_on_residuals():
  config = tiny_config("data.name=photo_crops", "data.val_examples=3", "autoencoder.model.in_channels=3",
                       "ldm.conditioning.kinds=('low_res',)", "ldm.conditioning.low_res.blur_sigma=0.5")
  f = autoencoder.downsampling_factor(config)
  originals = [ex["image"] for ex in data.make_dataset(config.data, "val")]
  plain = [ex["image"] for ex in autoencoder.first_stage_images(config, "val")]
  np.testing.assert_array_equal(np.stack(plain), np.stack(originals))
  config.ldm.conditioning.low_res.residual = True
  residuals = autoencoder.validation_images(config)
  np.testing.assert_allclose(residuals, np.stack([degradations.bicubic_residual(x, f, 0.5) for x in originals]),
                             atol=1e-6)
  assert np.abs(residuals).mean() < 0.5 * np.abs(np.stack(originals)).mean()


def test_back_projection_on_the_device_equals_pillow_iterations_on_the_host():
  low = np.random.default_rng(3).uniform(-1, 1, (8, 6, 3)).astype(np.float32)
  decoded = np.random.default_rng(4).uniform(-0.2, 0.2, (32, 24, 3)).astype(np.float32)
  expected = decoded + degradations.bicubic_upsample(low, 4)                   # residual mode
  for _ in range(2):
    expected = expected + degradations.bicubic_upsample(low - degradations.bicubic_downsample(expected, 4), 4)
  conditioner = LowResConditioner(3, residual=True, back_projection=2, factor=4)
  ours = np.asarray(conditioner.pixels(decoded[None], {"low_res": low[None]}))[0]
  assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) <= 1e-5
  # Each iteration brings the sample's own degradation closer to the input.
  gaps = [np.abs(degradations.bicubic_downsample(np.asarray(LowResConditioner(
      3, residual=True, back_projection=n, factor=4).pixels(decoded[None], {"low_res": low[None]}))[0], 4) - low).mean()
          for n in range(3)]
  assert gaps[1] < gaps[0] / 1.5 and gaps[2] < gaps[1] / 1.5, gaps
  with pytest.raises(ValueError, match=r"back_projection=1 applies the degradation on the device, which is bicubic "
                                       r"downsampling only; with blur_sigma=0.5 set back_projection=0"):
    LowResConditioner(3, blur_sigma=0.5, back_projection=1)
