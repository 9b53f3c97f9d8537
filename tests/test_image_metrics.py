"""PSNR and SSIM against scikit-image on real photo crops (the same images, float32)."""

import numpy as np
import pytest
import skimage.data
from skimage import metrics as reference

from latent_diffusion import image_metrics


@pytest.fixture(scope="module")
def pairs():
  """Crops of two photos [2, 48, 40, 3] in [0, 1] and distorted versions (noise, contrast, blur-like shift)."""
  rng = np.random.default_rng(0)
  clean = np.stack([skimage.data.astronaut()[100:148, 200:240], skimage.data.coffee()[150:198, 300:340]])
  clean = clean.astype(np.float32) / 255.0
  distorted = np.clip(np.stack([clean[0] + rng.normal(0, 0.08, clean[0].shape),
                                0.7 * np.roll(clean[1], 1, axis=1) + 0.2]), 0, 1).astype(np.float32)
  return clean, distorted


@pytest.mark.parametrize("gaussian", [False, True])
def test_ssim_equals_skimage(pairs, gaussian):
  clean, distorted = pairs
  options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) if gaussian else {}
  ours = np.asarray(image_metrics.ssim(clean, distorted, data_range=1.0, gaussian_weights=gaussian))
  theirs = [reference.structural_similarity(c, d, data_range=1.0, channel_axis=-1, **options)
            for c, d in zip(clean, distorted)]
  assert 0.2 < min(theirs) < max(theirs) < 0.95
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  grey = np.asarray(image_metrics.ssim(clean[..., :1] * 2 - 1, distorted[..., :1] * 2 - 1, data_range=2.0))
  theirs = [reference.structural_similarity(c[..., 0] * 2 - 1, d[..., 0] * 2 - 1, data_range=2.0)
            for c, d in zip(clean, distorted)]
  np.testing.assert_allclose(grey, theirs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(image_metrics.ssim(clean, clean), 1.0, rtol=1e-6)


def test_psnr_equals_skimage(pairs):
  clean, distorted = pairs
  theirs = [reference.peak_signal_noise_ratio(c, d, data_range=1.0) for c, d in zip(clean, distorted)]
  np.testing.assert_allclose(image_metrics.psnr(clean, distorted), theirs, rtol=1e-5)


def test_ssim_refuses_images_smaller_than_its_window():
  with pytest.raises(ValueError, match="at least 7x7 pixels; got \\(6, 8\\)"):
    image_metrics.ssim(np.zeros((1, 6, 8, 1)), np.zeros((1, 6, 8, 1)))
