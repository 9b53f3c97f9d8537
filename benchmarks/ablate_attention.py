"""Forward and forward + backward seconds of one UNet attention (B, T, N, H) in several formulations.

  python benchmarks/ablate_attention.py [--shape=8,1024,8,8] [--keys=1024] [--score-mib=0.5,1,2,4,8] [--repeats=5]
  <diffusers_torch venv>/bin/python benchmarks/ablate_attention.py --torch      # torch SDPA reference

The cpu-small UNet's level-0 self-attention is B=8, T=S=32*32, N=8 heads of H=8 channels. Variants:
  xla        jax.nn.dot_product_attention (materialises the [B, N, T, S] scores)
  ours[M]    latent_diffusion.models.attention.blocked_attention with blocks of M MiB of scores
             (attention.SCORE_BYTES; the budget derived from this CPU's caches is marked)
Prints `RESULT {json}`: per variant the median seconds, the gradient's relative error against `xla`
and the compiled temporaries.
"""

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import timing  # noqa: E402


def run_jax(shape, keys, budgets_mib, repeats) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from latent_diffusion.models import attention  # pylint: disable=import-outside-toplevel

  b, t, n, h = shape
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(b, length, n, h)), jnp.float32) for length in (t, keys, keys))
  default_mib = attention.score_bytes() / (1 << 20)
  variants = {"xla": (jax.nn.dot_product_attention, None)}
  variants.update({f"ours[{m:g}]" + ("*" if m == default_mib else ""): (attention.blocked_attention, int(m * (1 << 20)))
                   for m in budgets_mib})
  out, ref = {}, None
  for name, (fn, score_bytes) in variants.items():
    if score_bytes is not None:
      attention.SCORE_BYTES = score_bytes
      jax.clear_caches()                             # the block plan is read while tracing
    forward = jax.jit(fn)
    step = jax.jit(jax.value_and_grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))
    grads = step(q, k, v)[1]
    ref = grads if ref is None else ref
    err = max(float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r)) for g, r in zip(grads, ref))
    fwd = timing.measure(lambda f=forward: jax.block_until_ready(f(q, k, v)), warmup=1, repeats=repeats)
    both = timing.measure(lambda s=step: jax.block_until_ready(s(q, k, v)), warmup=1, repeats=repeats)
    temp = step.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    out[name] = {"forward_s": fwd["median_s"], "forward_backward_s": both["median_s"], "grad_rel_err": err,
                 "temp_mb": round(temp / 1e6)}
  return out


def run_torch(shape, keys, repeats) -> dict:
  import os  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  b, t, n, h = shape
  q = torch.randn(b, n, t, h, requires_grad=True)
  k, v = (torch.randn(b, n, keys, h, requires_grad=True) for _ in range(2))

  def forward():
    with torch.inference_mode():
      torch.nn.functional.scaled_dot_product_attention(q, k, v)

  def step():
    (torch.nn.functional.scaled_dot_product_attention(q, k, v) ** 2).sum().backward()
  fwd = timing.measure(forward, warmup=1, repeats=repeats)
  both = timing.measure(step, warmup=1, repeats=repeats)
  return {"torch_sdpa": {"forward_s": fwd["median_s"], "forward_backward_s": both["median_s"]}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8,1024,8,8", help="B,T,N,H of the queries")
  parser.add_argument("--keys", type=int, default=0, help="S (default: T, self-attention)")
  parser.add_argument("--score-mib", default="0.5,1,2,4,8")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch", action="store_true")
  args = parser.parse_args()
  shape = tuple(int(s) for s in args.shape.split(","))
  keys = args.keys or shape[1]
  budgets = [float(m) for m in args.score_mib.split(",")]
  timing.emit(run_torch(shape, keys, args.repeats) if args.torch else run_jax(shape, keys, budgets, args.repeats))


if __name__ == "__main__":
  main()
