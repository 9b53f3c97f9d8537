"""Measured float32 matmul peak of this machine (the MFU denominator), in JAX (XLA:CPU / the accelerator).

  python benchmarks/matmul_peak.py [--n=4096] [--repeats=10]

Prints `RESULT {json}` with the median GFLOP/s of an n x n x n float32 matmul (2 n^3 FLOPs).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import timing  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (args.n, args.n), jnp.float32) for k in keys)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
  result = timing.measure(lambda: matmul(a, b).block_until_ready(), warmup=2, repeats=args.repeats)
  flops = 2.0 * args.n ** 3
  result.update(n=args.n, peak_gflops=round(flops / result["median_s"] / 1e9, 1),
                best_gflops=round(flops / result["min_s"] / 1e9, 1), device=str(jax.devices()[0].device_kind))
  timing.emit(result)


if __name__ == "__main__":
  main()
