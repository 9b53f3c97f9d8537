"""The metrics' formulas on features (NumPy, float64 on the host), each equal to the reference tool's.

  frechet_distance   FID (Heusel et al. 2017); pytorch-fid's value on the same statistics.
  kernel_inception_distance   KID (Binkowski et al. 2018), polynomial kernel, unbiased MMD^2 over random
                     subsets; torch-fidelity's value (same subsets for the same seed).
  inception_score    IS (Salimans et al. 2016) over shuffled splits; torch-fidelity's value, accumulated
                     batch by batch (InceptionScoreAccumulator) without keeping the logits.
  precision_recall   improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls around each real /
                     generated feature; torch-fidelity's values.
"""

import numpy as np
import scipy.linalg


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2) for means [D] and covariances [D, D].

  tr((S1 S2)^1/2) is the sum of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric positive
  semi-definite, so `eigh` applies): the same number as pytorch-fid's scipy.linalg.sqrtm of the non-symmetric
  product, seconds instead of minutes at D = 2048, and stable when the covariances are singular (N < D).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"Statistics of different feature sizes: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}.")
  values, vectors = scipy.linalg.eigh(sigma1)
  sqrt_sigma1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
  tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((product + product.T) / 2.0), 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None, coef0: float) -> float:
  """Unbiased MMD^2 between equally many rows of x and y under k(a, b) = (gamma a.b + coef0)^degree."""
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  kernel = lambda a, b: (a @ b.T * gamma + coef0) ** degree
  k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
  m = len(x)
  off_diagonal = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
  return float(off_diagonal / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features_1: np.ndarray, features_2: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
                              coef0: float = 1.0, seed: int = 2020) -> tuple[float, float]:
  """(mean, std) of the unbiased polynomial MMD^2 over `subsets` random subsets of each set (torch-fidelity's
  draw order: one RandomState(seed), per subset `subset_size` rows of set 1 then of set 2, without replacement)."""
  n1, n2 = len(features_1), len(features_2)
  if min(n1, n2) < subset_size:
    raise ValueError(f"KID subset_size={subset_size} exceeds the samples available ({n1} and {n2}): lower the "
                     f"kid evaluator's subset_size or evaluate more samples (and raise max_kept_features).")
  rng = np.random.RandomState(seed)
  features_1, features_2 = np.asarray(features_1, np.float64), np.asarray(features_2, np.float64)
  mmds = []
  for _ in range(subsets):
    a = features_1[rng.choice(n1, subset_size, replace=False)]
    b = features_2[rng.choice(n2, subset_size, replace=False)]
    mmds.append(_polynomial_mmd2(a, b, degree, gamma, coef0))
  return float(np.mean(mmds)), float(np.std(mmds))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class InceptionScoreAccumulator:
  """IS over `splits` splits of a shuffled order of the `total` samples, fed batch by batch.

  Sample i belongs to the split of its position in RandomState(seed).permutation(total) (torch-fidelity's
  shuffle); per split only sum_i p_i [C] and sum_i p_i . log p_i are kept, since
  KL = mean_i p_i . log p_i - q . log q with q = mean_i p_i.
  """

  def __init__(self, total: int, num_classes: int, splits: int = 10, shuffle: bool = True, seed: int = 2020):
    if total < splits:
      raise ValueError(f"Inception Score over {splits} splits needs at least {splits} samples, got {total}.")
    position = np.empty(total, np.int64)
    position[np.random.RandomState(seed).permutation(total) if shuffle else np.arange(total)] = np.arange(total)
    bounds = np.array([i * total // splits for i in range(splits + 1)])
    self.split_of = np.searchsorted(bounds, position, side="right") - 1          # [total]
    self.p_sum = np.zeros((splits, num_classes))
    self.p_log_p_sum = np.zeros(splits)
    self.count = np.zeros(splits, np.int64)

  def update(self, logits: np.ndarray, indices: np.ndarray) -> None:
    """logits [B, C] of the samples with global indices [B]."""
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    split = self.split_of[indices]
    np.add.at(self.p_sum, split, p)
    np.add.at(self.p_log_p_sum, split, (p * log_p).sum(axis=1))
    np.add.at(self.count, split, 1)

  def result(self) -> tuple[float, float]:
    """(mean, std) over the splits of exp(KL(p(y|x) || p(y)))."""
    if not np.all(self.count > 0):
      raise ValueError("Inception Score: some splits received no samples.")
    q = self.p_sum / self.count[:, None]
    kl = self.p_log_p_sum / self.count - (q * np.log(q)).sum(axis=1)
    scores = np.exp(kl)
    return float(scores.mean()), float(scores.std())


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def _kth_neighbour_radii(features: np.ndarray, k: int, block: int) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row (its own zero distance counts as the first)."""
  radii = np.empty(len(features))
  for start in range(0, len(features), block):
    radii[start:start + block] = np.partition(_squared_distances(features[start:start + block], features), k,
                                              axis=1)[:, k]
  return radii


def _inside_manifold(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, block: int) -> np.ndarray:
  """[len(queries)] bool: within radius of at least one support point."""
  return np.concatenate([(_squared_distances(queries[s:s + block], support) <= radii[None]).any(axis=1)
                         for s in range(0, len(queries), block)])


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3, block: int = 1024) -> tuple[float, float]:
  """(precision, recall): the fraction of generated features inside the real k-NN manifold, and of real
  features inside the generated one. A collapsed generator keeps precision and loses recall."""
  real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
  if min(len(real), len(generated)) <= k:
    raise ValueError(f"Precision/recall with k={k} needs more than {k} samples per set, got {len(real)} real and "
                     f"{len(generated)} generated.")
  precision = _inside_manifold(generated, real, _kth_neighbour_radii(real, k, block), block).mean()
  recall = _inside_manifold(real, generated, _kth_neighbour_radii(generated, k, block), block).mean()
  return float(precision), float(recall)


def nearest_neighbour_distances(queries: np.ndarray, support: np.ndarray, block: int = 1024) -> np.ndarray:
  """[len(queries)] Euclidean distance of each query to its nearest support row."""
  queries, support = np.asarray(queries, np.float64), np.asarray(support, np.float64)
  return np.sqrt(np.concatenate([_squared_distances(queries[s:s + block], support).min(axis=1)
                                 for s in range(0, len(queries), block)]))
