"""Pallas TPU splash attention (jax.experimental.pallas.ops.tpu) for the UNet's attention (attention_impl='splash').

The kernel takes one example's q [N, T, H], k and v [N, S, H] with T and S multiples of its blocks (128 here),
so q is zero-padded to a multiple of 128 rows (the extra rows are dropped) and k / v to a multiple of 128 keys
that a mask hides (cross-attention's 77 CLIP tokens become 128 keys, 51 masked). q is scaled by 1/sqrt(H)
first (the kernel does not scale). Under a jit whose mesh is set (jax.set_mesh, as benchmarks/aot.py lowers
the train step), the kernel runs per device by shard_map over the batch; XLA cannot partition a Pallas call.
On a CPU (tests) it runs in Pallas interpret mode.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

BLOCK = 128


def _padded(n: int) -> int:
  return -(-n // BLOCK) * BLOCK


@functools.cache
def _kernel(heads: int, queries: int, keys: int, valid_keys: int, interpret: bool):
  """The splash kernel for `heads` x [queries, keys] (both multiples of BLOCK), keys >= valid_keys hidden."""
  mask = np.zeros((queries, keys), bool)
  mask[:, :valid_keys] = True
  multi = splash.MultiHeadMask([splash.NumpyMask(mask) for _ in range(heads)])
  sizes = splash.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                            block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK, block_kv_dq=BLOCK)
  with jax.ensure_compile_time_eval():     # the mask tables are constants, not tracers of the step being traced
    return splash.make_splash_mha(multi, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _per_device(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """[b, T, N, H] attention of the examples one device holds."""
  b, t, n, h = q.shape
  s = k.shape[1]
  pad = lambda x, size: jnp.pad(x, ((0, 0), (0, size - x.shape[1]), (0, 0), (0, 0)))
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)                                   # [b, N, len, H]
  kernel = _kernel(n, _padded(t), _padded(s), s, jax.default_backend() != "tpu")
  out = jax.vmap(kernel)(to_heads(pad(q * h ** -0.5, _padded(t))), to_heads(pad(k, _padded(s))),
                         to_heads(pad(v, _padded(s))))
  return jnp.swapaxes(out, 1, 2)[:, :t]


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k and v [B, S, N, H] -> [B, T, N, H] by splash attention."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return _per_device(q, k, v)
  axes = tuple(mesh.axis_names)
  if q.shape[0] % mesh.size:
    raise ValueError(f"splash attention splits the batch over all {mesh.size} devices of the mesh {dict(mesh.shape)}; "
                     f"a batch of {q.shape[0]} does not divide (use attention_impl='xla').")
  spec = P(axes)
  return jax.shard_map(_per_device, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
