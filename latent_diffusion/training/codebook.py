"""VQ codebook bookkeeping during stage-1 training: usage and perplexity, EMA codebook updates, dead-code restarts.

Statistics are exponential moving averages over steps, decay gamma (config.autoencoder.vq.ema_decay):
  N_k <- gamma N_k + (1 - gamma) n_k          n_k: latents of the batch assigned to code k
  m_k <- gamma m_k + (1 - gamma) sum of those latents
With codebook_update='ema' (VQ-VAE-2, van den Oord et al. 2017 appendix) the codebook is then
  e_k = m_k / N~_k,  N~_k = (N_k + eps) / (sum N + K eps) * sum N   (Laplace smoothing),
instead of following the gradient of the codebook term. N and m start at 1 and the initial codebook, so
a code never assigned keeps its place for ~log(1/eps) / (1 - gamma) steps. With dead_code_threshold > 0,
codes whose N_k falls below it are moved onto random encoder outputs of the batch (Jukebox's restarts) and
their N_k set to the mean count, which gives them time to win assignments.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class CodebookStats:
  cluster_size: jax.Array     # [K] EMA of assignments per step
  embed_sum: jax.Array        # [K, d] EMA of the sum of the latents assigned to each code


def init_stats(codebook: jax.Array) -> CodebookStats:
  return CodebookStats(cluster_size=jnp.ones(codebook.shape[:1], jnp.float32),
                       embed_sum=jnp.asarray(codebook, jnp.float32))


def usage_metrics(counts: jax.Array) -> dict:
  """Fraction of codes used at least once, and the perplexity exp(H(p)) of the code frequencies p (1 to K)."""
  p = counts / jnp.sum(counts)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"codebook_usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


@flax.struct.dataclass
class BatchStatistics:
  """What one batch tells the codebook: n_k, the sum of the latents assigned to each code, and for each
  code a random latent of the batch (its restart candidate)."""
  counts: jax.Array           # [K]
  sums: jax.Array             # [K, d]
  candidates: jax.Array       # [K, d]


def batch_statistics(latents: jax.Array, indices: jax.Array, num_codes: int, rng: jax.Array,
                     microbatch: jax.Array | int = 0, microbatches: int = 1) -> BatchStatistics:
  """Statistics of pre-quantization latents [B, h, w, d] and their code indices [B, h, w].

  Under gradient accumulation every microbatch calls this and the step averages the results; the
  counts and sums are then rescaled by `microbatches` (`total`), and code k takes its candidate from
  microbatch k % microbatches (the others contribute zeros), so the totals equal one whole-batch call's.
  """
  flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)           # [N, d]
  flat_indices = indices.reshape(-1)
  counts = jnp.zeros(num_codes, jnp.float32).at[flat_indices].add(1.0)        # a scatter-add: no [N, K] one-hot
  sums = jnp.zeros((num_codes, flat.shape[-1]), jnp.float32).at[flat_indices].add(flat)
  candidates = flat[jax.random.randint(rng, (num_codes,), 0, flat.shape[0])]
  mine = (jnp.arange(num_codes) % microbatches) == microbatch
  return BatchStatistics(counts=counts, sums=sums, candidates=jnp.where(mine[:, None], candidates, 0.0))


def total(mean: BatchStatistics, microbatches: int) -> BatchStatistics:
  """Whole-batch statistics from their mean over microbatches."""
  return jax.tree.map(lambda x: x * microbatches, mean)


def update(stats: CodebookStats, codebook: jax.Array, batch: BatchStatistics,
           vq_config) -> tuple[CodebookStats, jax.Array, dict]:
  """(statistics, codebook, metrics) after one batch; the codebook changes only with codebook_update='ema' or
  restarts. Metrics: codebook usage and perplexity of the batch's assignments, codes restarted."""
  num_codes = codebook.shape[0]
  decay = vq_config.ema_decay
  cluster_size = decay * stats.cluster_size + (1.0 - decay) * batch.counts
  embed_sum = decay * stats.embed_sum + (1.0 - decay) * batch.sums
  codebook = jnp.asarray(codebook, jnp.float32)
  if vq_config.codebook_update == "ema":
    n = jnp.sum(cluster_size)
    smoothed = (cluster_size + vq_config.ema_epsilon) / (n + num_codes * vq_config.ema_epsilon) * n
    codebook = embed_sum / smoothed[:, None]
  metrics = usage_metrics(batch.counts)
  if vq_config.dead_code_threshold > 0:
    dead = cluster_size < vq_config.dead_code_threshold
    fresh_size = jnp.mean(cluster_size)
    codebook = jnp.where(dead[:, None], batch.candidates, codebook)
    cluster_size = jnp.where(dead, fresh_size, cluster_size)
    embed_sum = jnp.where(dead[:, None], batch.candidates * fresh_size, embed_sum)
    metrics["dead_codes_restarted"] = jnp.sum(dead).astype(jnp.float32)
  return CodebookStats(cluster_size=cluster_size, embed_sum=embed_sum), codebook, metrics


# Where VQModel keeps its codebook [K, d] in the parameter tree.
CODEBOOK = ("quantize", "embedding")


def with_codebook(params: Any, codebook: jax.Array) -> Any:
  """params with the codebook replaced."""
  return {**params, CODEBOOK[0]: {**params[CODEBOOK[0]], CODEBOOK[1]: codebook}}
