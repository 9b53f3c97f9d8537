"""Ablations of our train step: which block limits it? Monkeypatches one formulation at a time.

  python benchmarks/ablate_train_step.py [--size=cpu-small] [--repeats=4] [--variants=baseline,heads_first,...]

For each variant: compile our stage-2 train step (benchmarks/systems/ours.py) with the patch applied,
then time it; the timed calls of all variants are interleaved round-robin so machine load hits them
alike. Prints one `RESULT {json}` line: per variant the median step seconds, FLOPs and temp bytes.
Variants (patches of jax.nn functions that latent_diffusion.models.layers calls):
  baseline     jax.nn.dot_product_attention as in layers.MultiHeadAttention (XLA implementation)
  heads_first  explicit attention with heads moved before tokens ([B, N, T, H]), q pre-scaled
  gelu_tanh    GEGLU's exact erf GELU replaced by the tanh approximation (NOT output-equal: a bound)
  query_chunks attention over blocks of 128 queries, rematerialised (benchmarks/ablate_attention.py)
  no_attention attention replaced by its value path (out = v): a bound on what attention costs
"""

import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems"), str(HERE.parent)]

import ablate_attention  # noqa: E402
import timing  # noqa: E402
import jax_workloads  # noqa: E402
import ours  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

ORIGINAL_ATTENTION = jax.nn.dot_product_attention
ORIGINAL_GELU = nn.gelu


def heads_first(q, k, v, *args, **kwargs):
  """softmax(q k^T / sqrt(H)) v for q [B, T, N, H], k / v [B, S, N, H] -> [B, T, N, H], heads-major."""
  q = jnp.swapaxes(q * q.shape[-1] ** -0.5, 1, 2)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  weights = jax.nn.softmax(jnp.einsum("bnth,bnsh->bnts", q, k), axis=-1)
  return jnp.swapaxes(jnp.einsum("bnts,bnsh->bnth", weights, v), 1, 2)


def query_chunks(q, k, v, *args, **kwargs):
  """ablate_attention.query_chunked(128) where 128 divides the query count, else unchanged."""
  t = q.shape[1]
  if t > 128 and t % 128 == 0:
    return ablate_attention.query_chunked(128)(q, k, v)
  return ORIGINAL_ATTENTION(q, k, v)


def value_only(q, k, v, *args, **kwargs):
  return q * 0 + jnp.mean(v, axis=1, keepdims=True)


PATCHES = {
    "baseline": (ORIGINAL_ATTENTION, ORIGINAL_GELU),
    "heads_first": (heads_first, ORIGINAL_GELU),
    "query_chunks": (query_chunks, ORIGINAL_GELU),
    "gelu_tanh": (ORIGINAL_ATTENTION, lambda x, approximate=True: ORIGINAL_GELU(x, approximate=True)),
    "no_attention": (value_only, ORIGINAL_GELU),
}


def compile_variant(setup: ours.Setup, name: str):
  jax.nn.dot_product_attention, nn.gelu = PATCHES[name]
  try:
    state, latents, context, key = setup.train_args()
    state = jax.tree.map(jnp.copy, state)  # each variant donates its own copy
    compiled = setup.train_step().lower(state, latents, context, key).compile()
  finally:
    jax.nn.dot_product_attention, nn.gelu = ORIGINAL_ATTENTION, ORIGINAL_GELU
  return compiled, [state], (latents, context, key)


def main():
  args = timing.parse_args(__doc__.splitlines()[0], ["--workload=train", *[a for a in sys.argv[1:]
                                                                           if not a.startswith("--variants")]])
  chosen = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--variants=")), ",".join(PATCHES))
  setup = ours.Setup(args.size)
  runs = {name: compile_variant(setup, name) for name in chosen.split(",")}
  times = {name: [] for name in runs}
  for i in range(args.warmup + args.repeats):
    for name, (compiled, box, inputs) in runs.items():
      start = time.perf_counter()
      box[0], loss = compiled(box[0], *inputs)
      loss.block_until_ready()
      if i >= args.warmup:
        times[name].append(time.perf_counter() - start)
  result = {}
  for name, (compiled, _, _) in runs.items():
    stats = jax_workloads.compiled_stats(compiled)
    result[name] = {"median_s": round(statistics.median(times[name]), 3), "min_s": round(min(times[name]), 3),
                    "gflops": round(stats["flops"] / 1e9, 1), "temp_gb": round(stats["temp_bytes"] / 1e9, 2)}
  timing.emit(result)


if __name__ == "__main__":
  main()
