"""Scaled dot-product attention that never stores the full [B, N, T, S] score tensor.

Work is split into blocks of whole batch elements and query rows whose float32 scores fit a
cache-sized budget: this CPU streams 7.5 GB/s from DRAM but 50-100 GB/s from cache, and scores
are read and written several times per block. The custom VJP saves only (q, k, v, out,
logsumexp); the backward pass recomputes each block's scores, as flash attention does. For the
1024-token self-attention of a 32x32 latent (B=8, 8 heads of 8 channels) forward + backward takes
0.07 s instead of 1.02 s with jax.nn.dot_product_attention (0.17 s with blocks spanning the whole
batch), the forward alone 0.03 s instead of 0.33 s (benchmarks/ablate_attention.py).
Accelerators keep jax.nn.dot_product_attention, which XLA / cuDNN fuse natively.
"""

import jax
import jax.numpy as jnp

# Score bytes per block, measured best on this CPU (benchmarks/README.md); about L2 + a share of L3.
SCORE_BYTES = 4 << 20
MIN_ROWS = 16


def _block_forward(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(out [G, c, N, H], logsumexp [G, c, N, 1] float32) for c queries of G batch elements."""
  scores = jnp.einsum("...tnh,...snh->...nts", q * q.shape[-1] ** -0.5, k, preferred_element_type=jnp.float32)
  peak = jnp.max(scores, axis=-1, keepdims=True)
  weights = jnp.exp(scores - peak)                                           # [G, N, c, S], unnormalised
  total = jnp.sum(weights, axis=-1, keepdims=True)
  out = jnp.einsum("...nts,...snh->...tnh", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  out = out / jnp.moveaxis(total, -3, -2)                                      # normalise after the matmul
  return out.astype(q.dtype), jnp.moveaxis(peak + jnp.log(total), -3, -2)


def _block_backward(q, k, v, out, lse, d_out):
  """(dq [G, c, N, H], dk, dv [G, S, N, H]) of one block, scores recomputed from logsumexp."""
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("...tnh,...snh->...nts", q * scale, k, preferred_element_type=jnp.float32)
  probs = jnp.exp(scores - jnp.moveaxis(lse, -3, -2))                          # [G, N, c, S]
  d_out32 = d_out.astype(jnp.float32)
  d_v = jnp.einsum("...nts,...tnh->...snh", probs, d_out32)
  d_probs = jnp.einsum("...tnh,...snh->...nts", d_out32, v.astype(jnp.float32))
  # softmax backward: dS = P * (dP - rowsum(dO * O)).
  row = jnp.moveaxis(jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1, keepdims=True), -3, -2)   # [G, N, c, 1]
  d_scores = probs * (d_probs - row) * scale
  d_q = jnp.einsum("...nts,...snh->...tnh", d_scores, k.astype(jnp.float32))
  d_k = jnp.einsum("...nts,...tnh->...snh", d_scores, q.astype(jnp.float32))
  return d_q, d_k, d_v


def block_shape(q_shape: tuple, keys: int) -> tuple[int, int]:
  """(batch elements G, query rows c) per block for q [B, T, N, H] and `keys` keys: rows halve while
  even, above MIN_ROWS and over SCORE_BYTES; whole batch elements are grouped (G divides B) while a
  group's [G, N, T, S] float32 scores fit SCORE_BYTES."""
  b, t, n, _ = q_shape
  score_bytes = SCORE_BYTES
  row_bytes = n * keys * 4
  rows = t
  while rows > MIN_ROWS and rows % 2 == 0 and rows * row_bytes > score_bytes:
    rows //= 2
  group = 1
  if rows == t:
    group = max(g for g in range(1, b + 1) if b % g == 0 and (g == 1 or g * t * row_bytes <= score_bytes))
  return group, rows


def _split(x: jax.Array, axis: int, size: int) -> jax.Array:
  """[..., D, ...] -> [D / size, ..., size, ...]: blocks of `size` along `axis` moved to the front."""
  x = x.reshape(*x.shape[:axis], x.shape[axis] // size, size, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _merge(x: jax.Array, axis: int) -> jax.Array:
  """Inverse of _split."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])


def _over_batch(fn, group: int, *arrays: jax.Array):
  """fn over groups of `group` batch elements of each [B, ...] array; outputs merged back along B."""
  if group == arrays[0].shape[0]:
    return fn(*arrays)
  if group == 1:                                     # no batch axis inside: XLA's dots are faster without one
    return jax.lax.map(lambda xs: fn(*xs), arrays)
  return jax.tree.map(lambda x: _merge(x, 0), jax.lax.map(lambda xs: fn(*xs), tuple(_split(x, 0, group) for x in arrays)))


def _group_forward(rows, q, k, v):
  """q [(G,) T, N, H]."""
  axis = q.ndim - 3
  if rows == q.shape[axis]:
    return _block_forward(q, k, v)
  blocks = jax.lax.map(lambda qb: _block_forward(qb, k, v), _split(q, axis, rows))
  return jax.tree.map(lambda x: _merge(x, axis), blocks)


def _group_backward(rows, q, k, v, out, lse, d_out):
  axis = q.ndim - 3
  if rows == q.shape[axis]:
    return _block_backward(q, k, v, out, lse, d_out)

  def accumulate(d_kv, xs):                          # every query block contributes to every key
    d_q, d_k, d_v = _block_backward(xs[0], k, v, *xs[1:])
    return (d_kv[0] + d_k, d_kv[1] + d_v), d_q

  zeros = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  (d_k, d_v), d_q = jax.lax.scan(accumulate, zeros, tuple(_split(x, axis, rows) for x in (q, out, lse, d_out)))
  return _merge(d_q, axis), d_k, d_v


@jax.custom_vjp
def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H] -> [B, T, N, H]."""
  return _attention_fwd(q, k, v)[0]


def _attention_fwd(q, k, v):
  group, rows = block_shape(q.shape, k.shape[1])
  out, lse = _over_batch(lambda *a: _group_forward(rows, *a), group, q, k, v)
  return out, (q, k, v, out, lse)


def _attention_bwd(residuals, d_out):
  q, k, v = residuals[:3]
  group, rows = block_shape(q.shape, k.shape[1])
  d_q, d_k, d_v = _over_batch(lambda *a: _group_backward(rows, *a), group, *residuals, d_out)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


blocked_attention.defvjp(_attention_fwd, _attention_bwd)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Attention [B, T, N, H] with the fastest formulation for the default backend (see module doc)."""
  if jax.default_backend() == "cpu":
    return blocked_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v)
