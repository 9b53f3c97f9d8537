"""Statistics accumulated batch by batch on the host, so that no evaluation holds all its features.

  RunningMoments  mean and covariance in float64, merged batch by batch (Chan et al.'s pairwise update:
                  exact, no sum-of-squares cancellation); memory D^2 floats whatever the sample count.
  KeptRows        a uniform random subset of at most `cap` rows, fixed by the seed and the sample count
                  (for the k-NN metrics and KID, which need the features themselves; memory cap x D).
  Reference statistics are `.npz` files with `mu` [D] and `sigma` [D, D] (pytorch-fid's and ADM's convention),
  so published reference files load as they are.
"""

import pathlib

import numpy as np


class RunningMoments:
  """Mean [D] and unbiased covariance [D, D] (np.cov's, ddof = 1) of rows fed in batches."""

  def __init__(self):
    self.count, self.mean, self.scatter = 0, None, None

  def update(self, rows: np.ndarray) -> None:
    rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
    if not len(rows):
      return
    batch_mean = rows.mean(axis=0)
    centered = rows - batch_mean
    batch_scatter = centered.T @ centered
    if self.count == 0:
      self.count, self.mean, self.scatter = len(rows), batch_mean, batch_scatter
      return
    total = self.count + len(rows)
    delta = batch_mean - self.mean
    self.scatter = self.scatter + batch_scatter + np.outer(delta, delta) * (self.count * len(rows) / total)
    self.mean = self.mean + delta * (len(rows) / total)
    self.count = total

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) in float64."""
    if self.count < 2:
      raise ValueError(f"A covariance needs at least 2 samples, got {self.count}.")
    return self.mean, self.scatter / (self.count - 1)


class KeptRows:
  """Rows of the samples whose global index falls in a fixed uniform subset of size min(cap, total)."""

  def __init__(self, total: int, cap: int, seed: int = 0):
    chosen = np.arange(total) if total <= cap else np.sort(np.random.default_rng(seed).choice(total, cap, replace=False))
    self.slot = np.full(total, -1, np.int64)
    self.slot[chosen] = np.arange(len(chosen))
    self.rows: np.ndarray | None = None
    self.filled = np.zeros(len(chosen), bool)

  def update(self, rows: np.ndarray, indices: np.ndarray) -> None:
    """rows [B, ...] of the samples with global indices [B]."""
    slots = self.slot[indices]
    keep = slots >= 0
    if self.rows is None:
      self.rows = np.zeros((len(self.filled), *rows.shape[1:]), rows.dtype)
    self.rows[slots[keep]] = rows[keep]
    self.filled[slots[keep]] = True

  def result(self) -> np.ndarray:
    if not self.filled.all():
      raise ValueError(f"Only {self.filled.sum()} of the {len(self.filled)} kept rows were fed.")
    return self.rows


def save_reference(path: str | pathlib.Path, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes reference statistics as pytorch-fid / ADM do: an .npz with `mu` and `sigma`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, mu=mu, sigma=sigma)


def load_reference(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) of a reference .npz; names the file and the keys it has when they do not fit."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"FID reference statistics not found: {path} (an .npz with 'mu' and 'sigma', e.g. "
                            f"written by latent_diffusion.evaluation.statistics.save_reference or pytorch-fid "
                            f"--save-stats).")
  with np.load(path) as data:
    if "mu" not in data or "sigma" not in data:
      raise ValueError(f"{path} holds {sorted(data.files)}; FID reference statistics need 'mu' and 'sigma'.")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
  if sigma.shape != (len(mu), len(mu)):
    raise ValueError(f"{path}: sigma {sigma.shape} does not match mu {mu.shape}.")
  return mu, sigma
