"""VQ codebook bookkeeping against NumPy transcriptions of the formulas: usage, perplexity, EMA codebook, restarts."""

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.configs import base
from latent_diffusion.training import codebook
from latent_diffusion.training.state import mean_over_microbatches

K, D = 6, 3


def vq_config(**fields):
  config = base.get_config().autoencoder.vq
  config.update(dict(num_embeddings=K), **fields)
  return config


def batch(seed: int = 0, n: int = 40):
  rng = np.random.default_rng(seed)
  latents = rng.normal(size=(2, n // 2, 1, D)).astype(np.float32)          # [B, h, w, d]
  indices = rng.choice([0, 1, 1, 2, 2, 2], size=(2, n // 2, 1)).astype(np.int32)  # codes 3..5 never used
  return latents, indices


def test_usage_and_perplexity():
  metrics = codebook.usage_metrics(jnp.asarray([4.0, 4.0, 0.0, 0.0]))
  assert float(metrics["codebook_usage"]) == 0.5
  np.testing.assert_allclose(metrics["perplexity"], 2.0, rtol=1e-6)          # two equally used codes
  counts = np.array([1.0, 2.0, 3.0, 0.0])
  p = counts / counts.sum()
  np.testing.assert_allclose(codebook.usage_metrics(jnp.asarray(counts))["perplexity"],
                             np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rtol=1e-6)


def test_ema_codebook_update_follows_the_formulas():
  latents, indices = batch()
  rng = np.random.default_rng(1)
  initial = rng.normal(size=(K, D)).astype(np.float32)
  stats = codebook.init_stats(jnp.asarray(initial))
  cfg = vq_config(codebook_update="ema", ema_decay=0.9, ema_epsilon=1e-3)
  statistics = codebook.batch_statistics(jnp.asarray(latents), jnp.asarray(indices), K, jax.random.key(0))
  stats, new, metrics = codebook.update(stats, jnp.asarray(initial), statistics, cfg)
  flat, flat_indices = latents.reshape(-1, D), indices.reshape(-1)
  counts = np.bincount(flat_indices, minlength=K).astype(np.float64)
  sums = np.stack([flat[flat_indices == k].sum(axis=0) for k in range(K)])
  cluster = 0.9 * 1.0 + 0.1 * counts
  embed = 0.9 * initial + 0.1 * sums
  smoothed = (cluster + 1e-3) / (cluster.sum() + K * 1e-3) * cluster.sum()
  np.testing.assert_allclose(stats.cluster_size, cluster, rtol=1e-6)
  np.testing.assert_allclose(new, embed / smoothed[:, None], rtol=1e-5)
  np.testing.assert_allclose(metrics["codebook_usage"], 0.5)
  assert "dead_codes_restarted" not in metrics
  # With codebook_update='loss' the statistics move but the codebook does not.
  _, unchanged, _ = codebook.update(codebook.init_stats(jnp.asarray(initial)), jnp.asarray(initial), statistics,
                                    vq_config(ema_decay=0.9))
  np.testing.assert_array_equal(unchanged, initial)


def test_dead_codes_restart_on_encoder_outputs():
  latents, indices = batch()
  initial = np.random.default_rng(1).normal(size=(K, D)).astype(np.float32)
  # After one batch with decay 0.5 the unused codes 3..5 have an EMA count of 0.5 < 0.6; codes 0..2 are above.
  cfg = vq_config(ema_decay=0.5, dead_code_threshold=0.6)
  statistics = codebook.batch_statistics(jnp.asarray(latents), jnp.asarray(indices), K, jax.random.key(3))
  stats, new, metrics = codebook.update(codebook.init_stats(jnp.asarray(initial)), jnp.asarray(initial), statistics,
                                        cfg)
  assert float(metrics["dead_codes_restarted"]) == 3.0
  np.testing.assert_array_equal(new[:3], initial[:3])
  flat = latents.reshape(-1, D)
  for k in range(3, K):   # each restarted code now sits on one of the batch's latents
    assert np.min(np.abs(flat - np.asarray(new[k])).sum(axis=1)) == 0.0
  np.testing.assert_allclose(stats.cluster_size[3:], np.mean(0.5 + 0.5 * np.bincount(indices.reshape(-1), minlength=K)))


def test_microbatch_statistics_add_up_to_the_whole_batch():
  latents, indices = batch(n=48)
  whole = codebook.batch_statistics(jnp.asarray(latents), jnp.asarray(indices), K, jax.random.key(0))
  parts = mean_over_microbatches(
      lambda micro, i: codebook.batch_statistics(micro["latents"], micro["indices"], K, jax.random.fold_in(
          jax.random.key(0), i), i, 2), {"latents": jnp.asarray(latents), "indices": jnp.asarray(indices)}, 2)
  summed = codebook.total(parts, 2)
  np.testing.assert_allclose(summed.counts, whole.counts)
  np.testing.assert_allclose(summed.sums, whole.sums, rtol=1e-5, atol=1e-6)
  flat = latents.reshape(-1, D)
  for candidate in np.asarray(summed.candidates):   # every code got exactly one latent of the batch
    assert np.min(np.abs(flat - candidate).sum(axis=1)) < 1e-6
