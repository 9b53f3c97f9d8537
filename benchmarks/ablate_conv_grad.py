"""Forward + backward seconds of one 3x3 convolution (NHWC, HWIO kernel, padding 1) with three filter gradients.

  python benchmarks/ablate_conv_grad.py [--shapes=8x32x32x64x64,8x32x32x192x64,...] [--repeats=7]

The default shapes are the cpu-small UNet's (batch 8; levels 32, 16, 8 px; the decoder's concatenated skip inputs).
Each variant computes the input gradient as XLA does; the kernel gradient dW [3, 3, C, F] as
  xla      XLA's own transpose of the convolution (Eigen on XLA:CPU, with [C, H, W, N] transposes of x on the way)
  nine     nine matmuls, one per tap: dW[i, j] = x shifted by (i, j), flattened to [N*H*W, C], contracted with dY
  im2col   one matmul of the nine shifted views concatenated along channels, [N*H*W, 9C], with dY [N*H*W, F]
The calls are timed round-robin (one call of each per round) so that machine noise falls on all alike. Prints
`RESULT {json}`: per shape and variant the median ms and the largest relative error of (dx, dW) against `xla`.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from latent_diffusion import host_cpu  # noqa: E402

CPU_SMALL_SHAPES = "8x32x32x64x64,8x32x32x192x64,8x16x16x128x128,8x16x16x384x128,8x8x8x256x256,8x8x8x512x256"


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def shifted_views(x: jax.Array) -> list[jax.Array]:
  """The nine [N, H, W, C] windows of x zero-padded by 1, tap (i, j) in row-major order."""
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return [padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]


def kernel_grad_nine(x: jax.Array, grad: jax.Array) -> jax.Array:
  flat_grad = grad.reshape(-1, grad.shape[-1])
  taps = [jnp.einsum("tc,tf->cf", view.reshape(-1, x.shape[-1]), flat_grad) for view in shifted_views(x)]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], grad.shape[-1])


def kernel_grad_im2col(x: jax.Array, grad: jax.Array) -> jax.Array:
  columns = jnp.concatenate(shifted_views(x), axis=-1).reshape(-1, 9 * x.shape[-1])
  return jnp.einsum("tk,tf->kf", columns, grad.reshape(-1, grad.shape[-1])).reshape(3, 3, x.shape[-1], grad.shape[-1])


def with_kernel_grad(kernel_grad):
  """`conv` whose VJP takes dx from XLA and dW from `kernel_grad(x, dY)`."""
  @jax.custom_vjp
  def f(x, kernel):
    return conv(x, kernel)

  def backward(residuals, grad):
    x, kernel = residuals
    return jax.vjp(lambda x_: conv(x_, kernel), x)[1](grad)[0], kernel_grad(x, grad)

  f.defvjp(lambda x, kernel: (conv(x, kernel), (x, kernel)), backward)
  return f


VARIANTS = {"xla": conv, "nine": with_kernel_grad(kernel_grad_nine), "im2col": with_kernel_grad(kernel_grad_im2col)}


def measure_shape(shape: tuple[int, ...], repeats: int) -> dict:
  n, h, w, c, f = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c), jnp.float32)
  grad = jnp.asarray(rng.standard_normal((n, h, w, f)), jnp.float32)
  steps = {name: jax.jit(lambda x, k, g, fn=fn: jax.vjp(fn, x, k)[1](g)) for name, fn in VARIANTS.items()}
  grads = {name: jax.block_until_ready(step(x, kernel, grad)) for name, step in steps.items()}
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(x, kernel, grad))
      times[name].append(time.perf_counter() - start)
  error = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  return {name: {"median_ms": round(1e3 * statistics.median(times[name]), 2),
                 "rel_error": max(error(got, want) for got, want in zip(grads[name], grads["xla"]))}
          for name in steps}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shapes", default=CPU_SMALL_SHAPES, help="comma-separated NxHxWxCxF")
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  results = {"cpu": host_cpu.describe().as_dict()}
  for text in args.shapes.split(","):
    shape = tuple(int(d) for d in text.split("x"))
    results[text] = measure_shape(shape, args.repeats)
    print(text, "  ".join(f"{name} {r['median_ms']} ms (error {r['rel_error']:.1e})"
                          for name, r in results[text].items()), flush=True)
  print("RESULT " + json.dumps(results))


if __name__ == "__main__":
  main()
