"""Blocks shared by the autoencoder and the UNet (NHWC), every parameter with logical axis names.

Logical names: conv kernels (None, None, 'conv_in', 'conv_out'); dense kernels ('embed', 'mlp'),
('mlp', 'embed'), ('embed', 'heads'), ('heads', 'embed'); biases take their output name; norm
parameters ('norm',); embedding tables ('vocab', 'embed'). config.mesh.rules maps them to mesh axes.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.attention import dot_product_attention

Dtype = Any
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def conv(features: int, kernel: int = 3, stride: int = 1, padding: Any = 1, *, name: str, dtype: Dtype,
         zero_init: bool = False) -> nn.Conv:
  """A kernel x kernel convolution; `padding` an int (symmetric) or a Flax padding spec."""
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  kernel_init, bias_init = _conv_inits(zero_init)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype, name=name,
                 kernel_init=kernel_init, bias_init=bias_init)


def _conv_inits(zero_init: bool = False):
  """(kernel_init, bias_init) of a convolution, with logical axes."""
  init = _zeros if zero_init else nn.initializers.lecun_normal()
  return (nn.with_logical_partitioning(init, (None, None, "conv_in", "conv_out")),
          nn.with_logical_partitioning(_zeros, ("conv_out",)))


@jax.custom_vjp
def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., C] @ kernel [C, F]. Its VJP computes the kernel gradient over tokens flattened to 2-D: left
  to autodiff, XLA:CPU makes a transposed copy of the [tokens, F] output gradient for it, which made
  the UNet's feed-forward blocks 1.3x slower (tokens x F is 16 MB at the cpu-small level 0)."""
  return jnp.dot(x, kernel)


def _linear_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _linear_bwd(residuals, grad):
  x, kernel = residuals
  d_kernel = jnp.einsum("tc,tf->cf", x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1]))
  return jnp.dot(grad, kernel.T), d_kernel.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def _linear_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """nn.Dense's dot_general (x [..., C] contracted with kernel [C, F]) as `linear`."""
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())):
    raise ValueError(f"linear contracts x [..., C] with a kernel [C, F]; got dimension numbers {dimension_numbers}")
  del precision, preferred_element_type
  return linear(lhs, rhs)


# config.ldm.model.linear_impl: how dense layers differentiate. 'cpu_flat' = `linear` above (XLA:CPU); 'xla' =
# lax.dot_general left to autodiff, with the layer's precision / preferred_element_type; 'auto' by the backend.
LINEAR_IMPLS = ("auto", "xla", "cpu_flat")


def resolve_linear_impl(impl: str) -> str:
  """`impl` with 'auto' replaced by the default of jax.default_backend(): cpu_flat on CPU, else xla."""
  if impl not in LINEAR_IMPLS:
    raise ValueError(f"Unknown linear_impl {impl!r} (config.ldm.model.linear_impl); known: {LINEAR_IMPLS}.")
  if impl == "auto":
    return "cpu_flat" if jax.default_backend() == "cpu" else "xla"
  return impl


def matmul(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
  """x [..., C] @ kernel [C, F] by `impl` (LINEAR_IMPLS)."""
  return linear(x, kernel) if resolve_linear_impl(impl) == "cpu_flat" else jnp.dot(x, kernel)


def _dense_inits(names: tuple[str, str], zero_init: bool = False):
  """(kernel_init, bias_init) of a dense layer with logical axes `names` (bias: the output axis)."""
  init = _zeros if zero_init else nn.initializers.lecun_normal()
  return nn.with_logical_partitioning(init, names), nn.with_logical_partitioning(_zeros, names[1:])


def dense(features: int, names: tuple[str, str] = ("embed", "mlp"), *, name: str, dtype: Dtype,
          use_bias: bool = True, zero_init: bool = False, linear_impl: str = "auto") -> nn.Dense:
  kernel_init, bias_init = _dense_inits(names, zero_init)
  flat = resolve_linear_impl(linear_impl) == "cpu_flat"
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  dot_general=_linear_dot_general if flat else jax.lax.dot_general,
                  kernel_init=kernel_init, bias_init=bias_init)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU as torch computes it, x/2 (1 + erf(x / sqrt 2)); on XLA:CPU 2.5x faster forward and
  1.7x forward + backward than jax.nn.gelu(approximate=False), whose erfc form lowers to slower code."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


class DenseWeights(nn.Module):
  """The kernel [in, features] and bias of a `dense` layer (same names, init and axes), returned rather than
  applied, so that projections of one input run as one matmul (`dense_together`)."""
  features: int
  names: tuple[str, str] = ("embed", "mlp")
  use_bias: bool = True

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
    kernel_init, bias_init = _dense_inits(self.names)
    kernel = self.param("kernel", kernel_init, (in_features, self.features))
    return kernel, self.param("bias", bias_init, (self.features,)) if self.use_bias else None


def dense_together(x: jax.Array, weights: list[tuple[jax.Array, jax.Array | None]], dtype: Dtype,
                   linear_impl: str = "auto") -> list[jax.Array]:
  """[x @ kernel + bias for each (kernel, bias)]. With cpu_flat (XLA:CPU) one matmul over the concatenated kernels
  (one pass over x); otherwise one matmul each, so that kernels sharded over a mesh axis stay as they are (their
  'heads' over 'tensor': concatenated, XLA re-sharded them with all-to-alls and collective-permutes)."""
  x = x.astype(dtype)
  with_bias = lambda y, b: y if b is None else y + b.astype(dtype)
  if resolve_linear_impl(linear_impl) != "cpu_flat":
    return [with_bias(matmul(x, k.astype(dtype), linear_impl), b) for k, b in weights]
  kernel = jnp.concatenate([k for k, _ in weights], axis=1).astype(dtype)
  bias = None if weights[0][1] is None else jnp.concatenate([b for _, b in weights])
  y = with_bias(matmul(x, kernel, linear_impl), bias)
  sizes = [k.shape[1] for k, _ in weights]
  return jnp.split(y, [sum(sizes[:i]) for i in range(1, len(sizes))], axis=-1)


class GroupNorm(nn.Module):
  """GroupNorm of x [B, ..., C] over the positions and each group's C / groups channels, float32 statistics.

  The same parameters ('scale', 'bias' [C]) and arithmetic as flax.linen.GroupNorm (variance E[x^2] - E[x]^2,
  clipped at 0), but the statistics are per-channel sums over the positions of x viewed as [B, P, C], then
  sums over each group's channels. flax reduces a [B, H, W, G, C / G] view over axes (1, 2, 4), which XLA:CPU
  ran 1.3-4x slower in the forward pass and 1.2-2.2x slower forward + backward at the UNet's and the
  autoencoder's shapes (benchmarks/README.md, "Results by CPU kind").
  """
  groups: int
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, c = x.shape[0], x.shape[-1]
    if c % self.groups:
      raise ValueError(f"GroupNorm {self.name!r}: {c} channels do not split into {self.groups} groups.")
    scale = self.param("scale", nn.with_logical_partitioning(_ones, ("norm",)), (c,))
    bias = self.param("bias", nn.with_logical_partitioning(_zeros, ("norm",)), (c,))
    x32 = x.reshape(b, -1, c).astype(jnp.float32)                       # [B, P, C]
    per_group = lambda sums: jnp.sum(sums.reshape(b, self.groups, -1), axis=-1) / (x32.shape[1] * c // self.groups)
    mean = per_group(jnp.sum(x32, axis=1))                              # [B, G]
    var = jnp.maximum(per_group(jnp.sum(x32 * x32, axis=1)) - mean * mean, 0.0)
    per_channel = lambda stat: jnp.repeat(stat, c // self.groups, axis=1)[:, None, :]   # [B, 1, C]
    y = (x32 - per_channel(mean)) * (per_channel(jax.lax.rsqrt(var + self.eps)) * scale) + bias
    return y.reshape(x.shape).astype(self.dtype)


def group_norm(groups: int, eps: float, *, name: str, dtype: Dtype) -> GroupNorm:
  return GroupNorm(groups, eps, dtype, name=name)


def layer_norm(eps: float, *, name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(_ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(_zeros, ("norm",)))


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [B, dim] of timesteps t [B] (int or float), frequencies max_period^(-i/half)."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, with an optional timestep embedding (added, or scale-shift as ADM).

  The sum with the shortcut is divided by `output_scale_factor` (diffusers' mid_block_scale_factor).
  """
  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  groups: int = 32
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  output_scale_factor: float = 1.0
  linear_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    h = nn.silu(group_norm(self.groups, self.eps, name="norm1", dtype=self.dtype)(x))
    h = conv(self.out_channels, name="conv1", dtype=self.dtype)(h)
    norm2 = group_norm(self.groups, self.eps, name="norm2", dtype=self.dtype)
    if temb is None:
      h = nn.silu(norm2(h))
    else:
      width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
      emb = dense(width, name="time_emb_proj", dtype=self.dtype, linear_impl=self.linear_impl)(nn.silu(temb))[:, None, None, :]
      if self.use_scale_shift_norm:
        scale, shift = jnp.split(emb, 2, axis=-1)
        h = nn.silu(norm2(h) * (1.0 + scale) + shift)
      else:
        h = nn.silu(norm2(h + emb))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = conv(self.out_channels, name="conv2", dtype=self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, kernel=1, padding=0, name="conv_shortcut", dtype=self.dtype)(x)
    return (x + h) / self.output_scale_factor


class Downsample(nn.Module):
  """Stride-2 3x3 conv; `asymmetric_padding` pads (0, 1) as the KL autoencoder's encoder does."""
  channels: int
  asymmetric_padding: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    padding = ((0, 1), (0, 1)) if self.asymmetric_padding else 1
    return conv(self.channels, stride=2, padding=padding, name="conv", dtype=self.dtype)(x)


class ConvWeights(nn.Module):
  """The 3x3 kernel [3, 3, C, F] and bias [F] of a `conv` layer (same names, init and axes), returned rather than
  applied."""
  features: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    kernel_init, bias_init = _conv_inits()
    return (self.param("kernel", kernel_init, (3, 3, in_features, self.features)),
            self.param("bias", bias_init, (self.features,)))


def _phase_taps(kernel: jax.Array, axis: int, phase: int) -> jax.Array:
  """The 2 taps along `axis` (of 3) that output phase 0 or 1 of a nearest-2x-upsampled input sees: phase 0
  reads input rows (i - 1, i) with taps (k0, k1 + k2), phase 1 rows (i, i + 1) with (k0 + k1, k2)."""
  k0, k1, k2 = (jnp.take(kernel, i, axis=axis) for i in range(3))
  return jnp.stack((k0, k1 + k2) if phase == 0 else (k0 + k1, k2), axis=axis)


def upsample_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """conv3x3(nearest_upsample_2x(x)) + bias, zero padding 1, for x [B, H, W, C], kernel [3, 3, C, F] -> [B, 2H, 2W, F].

  Without forming the upsampled image: each of the four output phases (2i + a, 2j + b) is a 2x2 convolution of x
  with summed taps (_phase_taps), 4/9 of the multiply-adds; the phases are then interleaved. Equal to the plain
  form up to float32 rounding; on XLA:CPU 2x faster forward and 4-5x forward + backward (benchmarks/README.md).
  """
  def phase(a: int, b: int) -> jax.Array:
    taps = _phase_taps(_phase_taps(kernel, 0, a), 1, b)                      # [2, 2, C, F]
    return jax.lax.conv_general_dilated(x, taps, (1, 1), ((1 - a, a), (1 - b, b)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jnp.stack([jnp.stack([phase(a, 0), phase(a, 1)], axis=3) for a in (0, 1)], axis=2)   # [B, H, 2, W, 2, F]
  b, h, _, w, _, f = y.shape
  return y.reshape(b, 2 * h, 2 * w, f) + bias


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling then a 3x3 conv (parameters 'conv/kernel', 'conv/bias' as a `conv`)."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = ConvWeights(self.channels, name="conv")(x.shape[-1])
    return upsample_conv(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention of tokens x [B, T, C] over context [B, L, D] (x itself if None)."""
  num_heads: int
  head_dim: int
  qkv_bias: bool = False
  dtype: Dtype = jnp.float32
  # Kernels (attention.ATTENTION_IMPLS, LINEAR_IMPLS; 'auto' = by backend).
  attention_impl: str = "auto"
  linear_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    inner = self.num_heads * self.head_dim
    weights = lambda name, a: DenseWeights(inner, ("embed", "heads"), self.qkv_bias, name=name)(a.shape[-1])
    if context is None:                              # q, k and v in one matmul
      q, k, v = dense_together(x, [weights(name, x) for name in ("to_q", "to_k", "to_v")], self.dtype,
                               self.linear_impl)
    else:
      q, = dense_together(x, [weights("to_q", x)], self.dtype, self.linear_impl)
      k, v = dense_together(context, [weights(name, context) for name in ("to_k", "to_v")], self.dtype,
                            self.linear_impl)
    heads = lambda a: a.reshape(a.shape[:2] + (self.num_heads, self.head_dim))  # [B, T, N, H]
    out = dot_product_attention(heads(q), heads(k), heads(v), self.attention_impl)  # [B, T, N, H]
    out_proj = dense(x.shape[-1], ("heads", "embed"), name="to_out", dtype=self.dtype, linear_impl=self.linear_impl)
    return out_proj(out.reshape(x.shape[:2] + (inner,)))


class AttentionBlock(nn.Module):
  """GroupNorm + self-attention over the H*W positions + residual (VAE mid block, UNets without context).

  `norm=False` drops the GroupNorm (diffusers' UNet2DModel mid block with scale-shift ResNets); the
  sum with the residual is divided by `output_scale_factor` (its mid_block_scale_factor).
  """
  num_heads: int
  head_dim: int
  groups: int = 32
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  norm: bool = True
  output_scale_factor: float = 1.0
  attention_impl: str = "auto"
  linear_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = group_norm(self.groups, self.eps, name="group_norm", dtype=self.dtype)(x) if self.norm else x
    out = MultiHeadAttention(self.num_heads, self.head_dim, qkv_bias=True, dtype=self.dtype, name="attention",
                             attention_impl=self.attention_impl, linear_impl=self.linear_impl)(y.reshape(b, h * w, c))
    return (x + out.reshape(b, h, w, c)) / self.output_scale_factor


class GEGLU(nn.Module):
  """Gated GELU feed-forward: W_out (a * gelu(g)) with [a, g] = W_in x."""
  dim_out: int
  mult: int = 4
  dtype: Dtype = jnp.float32
  linear_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    inner = x.shape[-1] * self.mult
    a, gate = jnp.split(dense(2 * inner, name="proj_in", dtype=self.dtype, linear_impl=self.linear_impl)(x), 2, axis=-1)
    out = dense(self.dim_out, ("mlp", "embed"), name="proj_out", dtype=self.dtype, linear_impl=self.linear_impl)
    return out(a * gelu(gate))


class BasicTransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention, cross-attention on the context, GEGLU feed-forward; residual each."""
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "auto"
  linear_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    attn = lambda name: MultiHeadAttention(self.num_heads, self.head_dim, dtype=self.dtype, name=name,
                                           attention_impl=self.attention_impl, linear_impl=self.linear_impl)
    x = x + attn("attn1")(layer_norm(1e-5, name="norm1", dtype=self.dtype)(x))
    x = x + attn("attn2")(layer_norm(1e-5, name="norm2", dtype=self.dtype)(x), context)
    ff = GEGLU(x.shape[-1], dtype=self.dtype, name="ff", linear_impl=self.linear_impl)
    return x + ff(layer_norm(1e-5, name="norm3", dtype=self.dtype)(x))


class SpatialTransformer(nn.Module):
  """LDM's cross-attention block: norm, project in, `depth` transformer blocks, project out, residual.

  x [B, H, W, C], context [B, L, D] or None (then cross-attention attends to x itself).
  """
  num_heads: int
  head_dim: int
  depth: int = 1
  use_linear_projection: bool = False
  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  attention_impl: str = "auto"
  linear_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    b, h, w, c = x.shape
    inner = self.num_heads * self.head_dim
    y = group_norm(self.groups, self.eps, name="norm", dtype=self.dtype)(x)
    if self.use_linear_projection:
      y = dense(inner, name="proj_in", dtype=self.dtype, linear_impl=self.linear_impl)(y.reshape(b, h * w, c))
    else:
      y = conv(inner, kernel=1, padding=0, name="proj_in", dtype=self.dtype)(y).reshape(b, h * w, inner)
    for i in range(self.depth):
      block = BasicTransformerBlock(self.num_heads, self.head_dim, dtype=self.dtype, name=f"transformer_blocks_{i}",
                                    attention_impl=self.attention_impl, linear_impl=self.linear_impl)
      y = block(y, context)
    if self.use_linear_projection:
      y = dense(c, ("mlp", "embed"), name="proj_out", dtype=self.dtype, linear_impl=self.linear_impl)(y)
      y = y.reshape(b, h, w, c)
    else:
      y = conv(c, kernel=1, padding=0, name="proj_out", dtype=self.dtype)(y.reshape(b, h, w, inner))
    return x + y
