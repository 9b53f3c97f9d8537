"""Ablations of our train step: which block limits it? Monkeypatches one formulation at a time.

  python benchmarks/ablate_train_step.py [--size=cpu-small] [--repeats=4] [--variants=baseline,xla_attention,...]

For each variant: compile our stage-2 train step (benchmarks/systems/ours.py) with the patch applied,
then time it; the timed calls of all variants are interleaved round-robin so machine load hits them
alike. Prints one `RESULT {json}` line: per variant the median step seconds, FLOPs and temp bytes.
Compare variants with each other only: executables that take turns evict each other's working
sets, so absolute times are higher than run.py's (1.79 s vs 1.31 s for the baseline here).
Variants (patches of the functions latent_diffusion.models.layers calls):
  baseline       as shipped: models.attention.dot_product_attention (blocked on CPU), erf-form GELU
  xla_attention  jax.nn.dot_product_attention (XLA's implementation, full score tensors)
  erfc_gelu      GEGLU's GELU as jax.nn.gelu(approximate=False) (same values, erfc formulation)
  no_attention   attention replaced by its value path (out = mean of v): a bound on what attention costs
"""

import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems"), str(HERE.parent)]

import timing  # noqa: E402
import jax_workloads  # noqa: E402
import ours  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from latent_diffusion.models import layers  # noqa: E402

ORIGINAL = layers.dot_product_attention, layers.gelu


def value_only(q, k, v, impl):
  del impl
  return q * 0 + jnp.mean(v, axis=1, keepdims=True)


PATCHES = {
    "baseline": ORIGINAL,
    "xla_attention": (lambda q, k, v, impl: jax.nn.dot_product_attention(q, k, v), ORIGINAL[1]),
    "erfc_gelu": (ORIGINAL[0], lambda x: jax.nn.gelu(x, approximate=False)),
    "no_attention": (value_only, ORIGINAL[1]),
}


def compile_variant(setup: ours.Setup, name: str):
  layers.dot_product_attention, layers.gelu = PATCHES[name]
  try:
    state, latents, context, key = setup.train_args()
    state = jax.tree.map(jnp.copy, state)  # each variant donates its own copy
    compiled = setup.train_step().lower(state, latents, context, key).compile()
  finally:
    layers.dot_product_attention, layers.gelu = ORIGINAL
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
