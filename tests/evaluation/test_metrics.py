"""FID, KID, IS and precision/recall equal pytorch-fid's and torch-fidelity's on the same features; streaming
statistics equal the all-at-once ones."""

import numpy as np
import pytest

from latent_diffusion.evaluation import metrics, statistics


def correlated_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
  """n samples of one correlated Gaussian in d dimensions (the same for every seed), mean moved by `shift`."""
  shape = np.random.default_rng(d)
  mixing, offset = shape.normal(size=(d, d)) / np.sqrt(d), shape.uniform(0, 1, d)
  return (np.random.default_rng(seed).normal(size=(n, d)) @ mixing + offset + shift).astype(np.float32)


def test_streamed_moments_equal_numpy_and_round_trip_through_npz(tmp_path):
  features = correlated_features(1000, 64, seed=0) * 100.0 + 1e3  # a large offset: the cancellation-prone case
  moments = statistics.RunningMoments()
  for start in range(0, len(features), 96):
    moments.update(features[start:start + 96])
  mu, sigma = moments.result()
  np.testing.assert_allclose(mu, features.astype(np.float64).mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9 * np.abs(sigma).max())
  statistics.save_reference(tmp_path / "ref.npz", mu, sigma)
  loaded = statistics.load_reference(tmp_path / "ref.npz")
  np.testing.assert_array_equal(loaded[0], mu) and np.testing.assert_array_equal(loaded[1], sigma)


def test_reference_file_errors_name_the_file_and_keys(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    statistics.load_reference(tmp_path / "missing.npz")
  np.savez(tmp_path / "odd.npz", mean=np.zeros(3))
  with pytest.raises(ValueError, match=r"odd\.npz holds \['mean'\]"):
    statistics.load_reference(tmp_path / "odd.npz")


@pytest.mark.parametrize("n", [3000, 200])  # well-conditioned covariances, and singular ones (N < D)
def test_frechet_distance_equals_pytorch_fid(n):
  from pytorch_fid.fid_score import calculate_frechet_distance

  d = 256
  a, b = correlated_features(n, d, seed=1), correlated_features(n, d, seed=2, shift=0.3)
  stats = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (a, b)]
  ours = metrics.frechet_distance(*stats[0], *stats[1])
  reference = calculate_frechet_distance(*stats[0], *stats[1])
  # sqrtm of a singular product carries its own rounding error: 1e-6 relative for full-rank statistics.
  assert abs(ours - reference) / reference <= (1e-6 if n > d else 1e-4), (ours, reference)
  assert abs(metrics.frechet_distance(*stats[0], *stats[0])) < 1e-6 * reference


def test_kid_equals_torch_fidelity():
  import torch
  from torch_fidelity.metric_kid import kid_features_to_metric

  a, b = correlated_features(300, 64, seed=3), correlated_features(250, 64, seed=4, shift=0.2)
  ours = metrics.kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=7)
  kid = lambda x, y: kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=20,
                                            kid_subset_size=100, rng_seed=7, verbose=False)
  keys = ("kernel_inception_distance_mean", "kernel_inception_distance_std")
  assert ours[0] > 0.01
  # We compute in float64; torch-fidelity in the features' dtype.
  np.testing.assert_allclose(ours, [kid(a.astype(np.float64), b.astype(np.float64))[k] for k in keys], rtol=1e-10)
  np.testing.assert_allclose(ours, [kid(a, b)[k] for k in keys], rtol=1e-4)
  with pytest.raises(ValueError, match="subset_size=1000 exceeds"):
    metrics.kernel_inception_distance(a, b)


def test_streamed_inception_score_equals_torch_fidelity():
  import torch
  from torch_fidelity.metric_isc import isc_features_to_metric

  logits = (np.random.default_rng(5).normal(size=(1003, 1008)) * 3.0).astype(np.float32)
  accumulator = metrics.InceptionScoreAccumulator(len(logits), 1008, splits=10, seed=2020)
  for start in range(0, len(logits), 128):  # batch boundaries unrelated to the split boundaries
    accumulator.update(logits[start:start + 128], np.arange(start, min(start + 128, len(logits))))
  ours = accumulator.result()
  ref = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
  assert ours[0] > 2.0
  np.testing.assert_allclose(ours, (ref["inception_score_mean"], ref["inception_score_std"]), rtol=1e-9)


def test_precision_recall_equal_torch_fidelity_and_expose_collapse():
  import torch
  from torch_fidelity.metric_prc import prc_features_to_metric

  real, generated = correlated_features(400, 32, seed=6), correlated_features(350, 32, seed=7, shift=0.15)
  ours = metrics.precision_recall(real, generated, k=3, block=128)
  ref = prc_features_to_metric(torch.from_numpy(generated), torch.from_numpy(real), prc_neighborhood=3,
                               prc_batch_size=10000, save_cpu_ram=False, verbose=False)
  np.testing.assert_allclose(ours, (ref["precision"], ref["recall"]), rtol=1e-6)  # theirs pass through float32
  assert 0.3 < ours[0] < 0.99 and 0.3 < ours[1] < 0.99
  # Ten good samples repeated: every one lies on the real manifold, but they cover almost none of it.
  collapsed = np.repeat(real[:10] + 0.01, 35, axis=0)
  precision, recall = metrics.precision_recall(real, collapsed)
  assert precision == 1.0 and recall <= 10 / 400


def test_kept_rows_are_a_fixed_uniform_subset():
  rows = np.arange(1000)[:, None].astype(np.float32)
  kept = statistics.KeptRows(total=1000, cap=100, seed=3)
  for start in range(0, 1000, 64):
    kept.update(rows[start:start + 64], np.arange(start, min(start + 64, 1000)))
  subset = kept.result()[:, 0]
  assert len(np.unique(subset)) == 100 and np.all(np.diff(subset) > 0)
  assert 300 < subset.mean() < 700  # spread over the whole index range, not the first 100
