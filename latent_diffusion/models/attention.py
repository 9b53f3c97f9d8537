"""Scaled dot-product attention kernels; the CPU one never stores the full [B, N, T, S] score tensor.

CPU: work is split into blocks of (batch x head) pairs and query rows whose float32 scores fit a
cache-sized budget: this CPU streams 7.5 GB/s from DRAM but 50-100 GB/s from cache, and scores
are read and written several times per block. Inside, queries are kept [BN, T, H] and keys /
values transposed to [BN, H, S], the operand layouts for which XLA:CPU's small-head matmuls run
fastest (up to 20x faster than other orders; benchmarks/ablate_attention.py). The custom VJP saves
only (q, k, v, out, logsumexp); the backward pass recomputes each block's scores, as flash
attention does. Accelerators use jax.nn.dot_product_attention (XLA / cuDNN), probs_saved_attention (XLA ops with
a leaner backward, TPU's default) or a Pallas kernel: `dot_product_attention` dispatches on an explicit `impl`
(config.ldm.model.attention_impl).
"""

import jax
import jax.numpy as jnp

from latent_diffusion import host_cpu

# Score bytes per block; None = derived from the host CPU's caches by score_bytes() (set it to pin a budget).
SCORE_BYTES: int | None = None
MIN_ROWS = 16


def _block_forward(q: jax.Array, k_t: jax.Array, v_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(out [G, c, H], logsumexp [G, c, 1] float32) for q [G, c, H], k_t and v_t [G, H, S]."""
  scores = jnp.einsum("...th,...hs->...ts", q * q.shape[-1] ** -0.5, k_t, preferred_element_type=jnp.float32)
  peak = jnp.max(scores, axis=-1, keepdims=True)
  weights = jnp.exp(scores - peak)                                           # [G, c, S], unnormalised
  total = jnp.sum(weights, axis=-1, keepdims=True)
  out = jnp.einsum("...ts,...hs->...th", weights.astype(v_t.dtype), v_t, preferred_element_type=jnp.float32)
  return (out / total).astype(q.dtype), peak + jnp.log(total)               # normalised after the matmul


def _block_backward(q, k_t, v_t, out, lse, d_out, q_t, d_out_t):
  """(dq [G, c, H], dk_t, dv_t [G, H, S]) of one block, scores recomputed from logsumexp; q_t and d_out_t are q and
  d_out transposed to [G, H, c] (see _attention_bwd)."""
  scale = q.shape[-1] ** -0.5
  f32 = lambda x: x.astype(jnp.float32)
  probs = jnp.exp(jnp.einsum("...th,...hs->...ts", f32(q) * scale, f32(k_t)) - lse)  # [G, c, S]
  d_v = jnp.einsum("...ht,...ts->...hs", f32(d_out_t), probs)
  d_probs = jnp.einsum("...th,...hs->...ts", f32(d_out), f32(v_t))
  row = jnp.sum(f32(d_out) * f32(out), axis=-1, keepdims=True)              # softmax backward:
  d_scores = probs * (d_probs - row) * scale                                 # dS = P * (dP - rowsum(dO * O))
  d_q = jnp.einsum("...ts,...hs->...th", d_scores, f32(k_t))
  d_k = jnp.einsum("...ht,...ts->...hs", f32(q_t), d_scores)
  return d_q, d_k, d_v


# Budget when the caches are unknown: between the best budgets measured on the CPUs below.
FALLBACK_SCORE_BYTES = 2 << 20


def score_bytes(cpu: host_cpu.HostCpu | None = None) -> int:
  """Float32 score bytes per block: SCORE_BYTES if set, else twice the per-core L2, at most a core's share of L3.

  A block's scores are written once and read about four times (softmax, P.V; in the backward pass dP, dS and
  their two matmuls), so they must stay in cache between passes; with q, k, v and the outputs beside them,
  two L2s' worth (L2 plus a slice of L3) was best measured (benchmarks/ablate_attention.py, level-0
  self-attention of cpu-small, forward + backward): on an AMD EPYC (Zen 3, 512 KiB L2) 1 MiB was best on one core
  (0.25-1 MiB within 1 %, 4 MiB 8 % and 8 MiB 20 % slower) and within 3 % of the best (4 MiB) on two, where
  0.25 MiB was 84 % slower; 4 MiB on the machine of the 2026-11-25 benchmark run (AVX-512; its caches were not
  recorded: Intel Xeons of that class have 2 MiB L2).
  """
  if SCORE_BYTES is not None:
    return SCORE_BYTES
  cpu = cpu or host_cpu.describe()
  l2, l3 = cpu.cache(2), cpu.cache(3)
  if l2 is None:
    return FALLBACK_SCORE_BYTES
  budget = 2 * l2.size_bytes // l2.shared_by
  if l3 is not None:
    budget = min(budget, l3.size_bytes // min(l3.shared_by, cpu.usable_cpus))
  return budget


def block_shape(pairs: int, queries: int, keys: int) -> tuple[int, int]:
  """(pairs G, query rows c) per block, for `pairs` (batch x head) pairs: rows halve while even,
  above MIN_ROWS and over score_bytes(); then G is the largest divisor of `pairs` whose
  [G, c, S] float32 scores fit score_bytes() (at least 1)."""
  budget = score_bytes()
  row_bytes = keys * 4
  rows = queries
  while rows > MIN_ROWS and rows % 2 == 0 and rows * row_bytes > budget:
    rows //= 2
  return max(g for g in range(1, pairs + 1) if pairs % g == 0 and (g == 1 or g * rows * row_bytes <= budget)), rows


def _split(x: jax.Array, axis: int, size: int) -> jax.Array:
  """[..., D, ...] -> [D / size, ..., size, ...]: blocks of `size` along `axis` moved to the front;
  blocks of size 1 lose that axis."""
  x = x.reshape(*x.shape[:axis], x.shape[axis] // size, size, *x.shape[axis + 1:])
  x = jnp.moveaxis(x, axis, 0)
  return x.squeeze(axis + 1) if size == 1 else x


def _merge(x: jax.Array, axis: int, size: int) -> jax.Array:
  """Inverse of _split."""
  x = jnp.expand_dims(x, axis + 1) if size == 1 else x
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])


def _blocks(fn, size: int, axis: int, *arrays: jax.Array):
  """lax.map of fn over blocks of `size` along `axis` of every array; outputs merged back."""
  if size == arrays[0].shape[axis]:
    return fn(*arrays)
  out = jax.lax.map(lambda xs: fn(*xs), tuple(_split(x, axis, size) for x in arrays))
  return jax.tree.map(lambda x: _merge(x, axis, size), out)


def _pairs_forward(rows, q, k_t, v_t):
  """Forward of a group of pairs, q [(G,) T, H], over blocks of `rows` queries."""
  return _blocks(lambda qb: _block_forward(qb, k_t, v_t), rows, q.ndim - 2, q)


def _pairs_backward(rows, q, k_t, v_t, out, lse, d_out, q_t, d_out_t):
  axis = q.ndim - 2
  if rows == q.shape[axis]:
    return _block_backward(q, k_t, v_t, out, lse, d_out, q_t, d_out_t)

  def accumulate(d_kv, xs):                          # every query block contributes to every key
    d_q, d_k, d_v = _block_backward(xs[0], k_t, v_t, *xs[1:])
    return (d_kv[0] + d_k, d_kv[1] + d_v), d_q

  zeros = jnp.zeros(k_t.shape, jnp.float32), jnp.zeros(v_t.shape, jnp.float32)
  blocks = (*(_split(x, axis, rows) for x in (q, out, lse, d_out)),
            *(_split(x, axis + 1, rows) for x in (q_t, d_out_t)))
  (d_k, d_v), d_q = jax.lax.scan(accumulate, zeros, blocks)
  return _merge(d_q, axis, rows), d_k, d_v


def _to_pairs(q, k, v):
  """[B, T, N, H] -> q [B*N, T, H]; k, v [B, S, N, H] -> [B*N, H, S]."""
  b, t, n, h = q.shape
  return (jnp.swapaxes(q, 1, 2).reshape(b * n, t, h),
          *(jnp.transpose(x, (0, 2, 3, 1)).reshape(b * n, h, x.shape[1]) for x in (k, v)))


def _from_pairs(x, b, transposed=False):
  """Inverse of _to_pairs for one array."""
  x = x.reshape(b, -1, *x.shape[1:])
  return jnp.transpose(x, (0, 3, 1, 2)) if transposed else jnp.swapaxes(x, 1, 2)


@jax.custom_vjp
def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H] -> [B, T, N, H]."""
  return _attention_fwd(q, k, v)[0]


def _attention_fwd(q, k, v):
  q_p, k_t, v_t = _to_pairs(q, k, v)
  group, rows = block_shape(*q_p.shape[:2], k.shape[1])
  out, lse = _blocks(lambda *a: _pairs_forward(rows, *a), group, 0, q_p, k_t, v_t)
  return _from_pairs(out, q.shape[0]), (q_p, k_t, v_t, out, lse)


def _attention_bwd(residuals, d_out):
  q_p, k_t, v_t = residuals[:3]
  b = d_out.shape[0]
  group, rows = block_shape(*q_p.shape[:2], k_t.shape[-1])
  d_out_p = jnp.swapaxes(d_out, 1, 2).reshape(q_p.shape)
  # q and dO also transposed to [BN, H, T], outside the loops: dK = dS^T q and dV = P^T dO then contract the
  # operands' leading axes as plain matrix products, which XLA:CPU's YNNPACK dots take (transposed in the loop
  # body, XLA folds the transposes back into the dots and runs them by Eigen, 1.4x slower here).
  transposed = (jnp.swapaxes(q_p, 1, 2), jnp.swapaxes(d_out_p, 1, 2))
  d_q, d_k, d_v = _blocks(lambda *a: _pairs_backward(rows, *a), group, 0, *residuals, d_out_p, *transposed)
  return (_from_pairs(d_q, b).astype(q_p.dtype), _from_pairs(d_k, b, transposed=True).astype(k_t.dtype),
          _from_pairs(d_v, b, transposed=True).astype(v_t.dtype))


blocked_attention.defvjp(_attention_fwd, _attention_bwd)


@jax.custom_vjp
def probs_saved_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H] -> [B, T, N, H], for XLA on TPU / GPU.

  Every [B, N, T, S] array that reaches memory is in q's dtype: the scores leave the q.k matmul in it (float32
  accumulation inside), softmax arithmetic runs in float32 inside the fusions, and only the unnormalised
  probabilities exp(s - max) and their row sums are kept for the backward pass (with q, k, v and the output); rows
  are normalised after the P.V matmul. Left to autodiff, jax.nn.dot_product_attention writes float32 scores and
  keeps the float32 exponentials and the cast probabilities: in bfloat16 3x the kept bytes (6 vs 2 GiB for one
  64 x 64-token self-attention of SD-1.5 at 8 images) and twice the bytes per pass over the scores, which is what
  bounds attention with 40-channel heads on TPU. The price in bfloat16: scores rounded to 8 bits of mantissa
  before the softmax, as diffusers-Flax's attention does (its softmax also runs in bfloat16). In float32 it is
  exact softmax attention. The softmax backward takes rowsum(dP * P) as rowsum(dO * O), as flash attention does.
  """
  return _probs_saved_fwd(q, k, v)[0]


def _probs_saved_fwd(q, k, v):
  scores = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
  weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  inv_total = 1.0 / jnp.sum(weights, axis=-1)                                 # [B, N, T]
  weights = weights.astype(q.dtype)                                           # unnormalised, in [0, 1]
  out = jnp.einsum("bnts,bsnh->btnh", weights, v, preferred_element_type=jnp.float32)
  out = (out * jnp.swapaxes(inv_total, 1, 2)[..., None]).astype(q.dtype)
  return out, (q, k, v, weights, inv_total, out)


def _probs_saved_bwd(residuals, d_out):
  q, k, v, weights, inv_total, out = residuals
  f32 = jnp.float32
  d_out_scaled = (d_out.astype(f32) * jnp.swapaxes(inv_total, 1, 2)[..., None]).astype(weights.dtype)
  d_v = jnp.einsum("bnts,btnh->bsnh", weights, d_out_scaled, preferred_element_type=f32)   # P^T dO
  d_probs = jnp.einsum("btnh,bsnh->bnts", d_out.astype(v.dtype), v, preferred_element_type=f32)
  row = jnp.einsum("btnh,btnh->bnt", d_out.astype(f32), out.astype(f32))
  probs = weights.astype(f32) * inv_total[..., None]
  d_scores = (probs * (d_probs - row[..., None]) * q.shape[-1] ** -0.5).astype(q.dtype)
  d_q = jnp.einsum("bnts,bsnh->btnh", d_scores, k, preferred_element_type=f32)
  d_k = jnp.einsum("bnts,btnh->bsnh", d_scores, q, preferred_element_type=f32)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


probs_saved_attention.defvjp(_probs_saved_fwd, _probs_saved_bwd)


# config.ldm.model.attention_impl: the attention kernel. 'auto' picks by the backend the step is traced for.
ATTENTION_IMPLS = ("auto", "xla", "xla_probs", "cpu_blocked", "cudnn", "splash")


# What 'auto' means per backend (others: xla). TPU: xla_probs, by XLA's TPU cost model of SD-1.5's train step
# (benchmarks/README.md, issue 16); GPU keeps jax.nn's (not compiled for a GPU here).
AUTO_ATTENTION = {"cpu": "cpu_blocked", "tpu": "xla_probs"}


def resolve_attention_impl(impl: str, backend: str | None = None) -> str:
  """`impl` with 'auto' replaced by AUTO_ATTENTION's choice for `backend` (default: jax.default_backend()).

  (An AOT compile for a TPU topology runs on a CPU host: it passes backend='tpu'.)
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"Unknown attention_impl {impl!r} (config.ldm.model.attention_impl); known: {ATTENTION_IMPLS}.")
  if impl == "auto":
    return AUTO_ATTENTION.get(backend or jax.default_backend(), "xla")
  return impl


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "auto") -> jax.Array:
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H] -> [B, T, N, H], by kernel `impl`:

  xla          jax.nn.dot_product_attention as XLA lowers it (fuses natively on TPU / GPU);
  xla_probs    probs_saved_attention above: the same XLA ops, only the probabilities (q's dtype) kept for backward;
  cpu_blocked  blocked_attention above (this module's CPU kernel);
  cudnn        jax.nn.dot_product_attention(implementation='cudnn'): cuDNN's fused flash attention (GPU, fp16/bf16);
  splash       Pallas TPU splash attention (latent_diffusion.models.splash; TPU, or Pallas interpret mode).
  """
  impl = resolve_attention_impl(impl)
  if impl == "cpu_blocked":
    return blocked_attention(q, k, v)
  if impl == "xla_probs":
    return probs_saved_attention(q, k, v)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  if impl == "splash":
    from latent_diffusion.models import splash  # pylint: disable=import-outside-toplevel  (Pallas TPU, loaded on use)
    return splash.splash_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v)
