"""Forward + backward seconds of one UNet self-attention (B, T, N, H) in several formulations.

  python benchmarks/ablate_attention.py [--shape=8,1024,8,8] [--repeats=5]      # JAX variants (our .venv)
  <diffusers_torch venv>/bin/python benchmarks/ablate_attention.py --torch      # torch SDPA reference

The cpu-small UNet's level-0 self-attention is B=8, T=32*32, N=8 heads of H=8 channels; it dominates
our train step (benchmarks/ablate_train_step.py: removing attention cuts the step ~4x). Variants:
  xla          jax.nn.dot_product_attention (materialises the [B, N, T, T] scores, as layers.py now)
  query_chunks lax.map over query blocks of `--chunk` rows, each block rematerialised in the backward
               pass (jax.checkpoint): only [B, N, chunk, T] scores live at a time
Prints `RESULT {json}`: median seconds per variant and the relative error against `xla`.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import timing  # noqa: E402


def query_chunked(chunk: int):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def attention(q, k, v):
    b, t, n, h = q.shape
    blocks = jnp.moveaxis(q.reshape(b, t // chunk, chunk, n, h), 1, 0)            # [T/c, B, c, N, H]
    block = jax.checkpoint(lambda qb: jax.nn.dot_product_attention(qb, k, v))
    return jnp.moveaxis(jax.lax.map(block, blocks), 0, 1).reshape(b, t, n, h)
  return attention


def run_jax(shape, repeats, chunk) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  q, k, v = (jnp.asarray(np.random.default_rng(i).normal(size=shape), jnp.float32) for i in range(3))
  variants = {"xla": jax.nn.dot_product_attention, "query_chunks": query_chunked(chunk)}
  out, ref = {}, None
  for name, fn in variants.items():
    loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) ** 2)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    value, grads = step(q, k, v)
    ref = grads if ref is None else ref
    err = max(float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r)) for g, r in zip(grads, ref))
    r = timing.measure(lambda s=step: jax.block_until_ready(s(q, k, v)), warmup=1, repeats=repeats)
    temp = step.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    out[name] = {"median_s": r["median_s"], "min_s": r["min_s"], "grad_rel_err": err, "temp_mb": round(temp / 1e6)}
  return out


def run_torch(shape, repeats) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  b, t, n, h = shape
  q, k, v = (torch.randn(b, n, t, h, requires_grad=True) for _ in range(3))

  def step():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    (out ** 2).sum().backward()
  r = timing.measure(step, warmup=1, repeats=repeats)
  return {"torch_sdpa": {"median_s": r["median_s"], "min_s": r["min_s"]}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8,1024,8,8")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--chunk", type=int, default=128)
  parser.add_argument("--torch", action="store_true")
  args = parser.parse_args()
  shape = tuple(int(s) for s in args.shape.split(","))
  timing.emit(run_torch(shape, args.repeats) if args.torch else run_jax(shape, args.repeats, args.chunk))


if __name__ == "__main__":
  main()
