"""Blocked attention against the plain softmax formula: values and all three gradients, f32 and bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion.models import attention


def _reference(q, k, v):
  scores = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(scores, axis=-1), v)


def _inputs(t, s, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=shape) * 2, jnp.float32) for shape in ((2, t, 3, 8), (2, s, 3, 8), (2, s, 3, 8))]


@pytest.mark.parametrize("t, s, score_bytes", [(64, 64, 2 * 3 * 16 * 64 * 4), (64, 7, 2 * 3 * 16 * 7 * 4),
                                               (40, 40, 2 * 3 * 8 * 40 * 4), (16, 16, 1 << 20)])
def test_values_and_gradients_match_softmax_attention(t, s, score_bytes, monkeypatch):
  """Blocks of 16 queries, cross-attention to few keys, blocks of 20 (T = 40), a single block; the
  forward-only and the training block sizes both exercised."""
  monkeypatch.setattr(attention, "FORWARD_SCORE_BYTES", score_bytes)
  monkeypatch.setattr(attention, "TRAIN_SCORE_BYTES", 2 * score_bytes)
  q, k, v = _inputs(t, s)
  ours = attention.blocked_attention
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(jax.jit(ours)(q, k, v), _reference(q, k, v)) <= 1e-6
  cotangent = jnp.asarray(np.random.default_rng(9).normal(size=(2, t, 3, 8)), jnp.float32)
  grads = [jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * cotangent), argnums=(0, 1, 2)))(q, k, v)
           for f in (ours, _reference)]
  for got, want in zip(*grads):
    assert rel(got, want) <= 1e-5


def test_bfloat16_inputs_keep_their_dtype_and_stay_close():
  q, k, v = _inputs(64, 64)
  low = attention.blocked_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert low.dtype == jnp.bfloat16
  assert float(jnp.linalg.norm(low.astype(jnp.float32) - _reference(q, k, v)) / jnp.linalg.norm(_reference(q, k, v))) < 2e-2


def test_block_rows_keep_scores_within_budget():
  q, k = jnp.zeros((8, 1024, 8, 8)), jnp.zeros((8, 1024, 8, 8))
  assert attention._rows(q, k, 16 << 20, 1 << 30) == 64         # 8 * 8 * 64 * 1024 * 4 bytes = 16 MiB
  assert attention._rows(q, k[:, :77], 16 << 20, 1 << 30) == 256  # few keys: at least 4 blocks of T
  assert attention._rows(q, k, 32 << 20, 128) == 128
  assert attention._rows(q[:, :24], k, 1, 128) == 12              # halving stops once at most 16 rows
