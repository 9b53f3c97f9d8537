"""InceptionV3 as FID uses it (the 2015-12-05 TensorFlow graph, ported by pytorch-fid / torch-fidelity), NHWC.

Numerically `pytorch_fid.inception.InceptionV3` / torch-fidelity's `FeatureExtractorInceptionV3` in inference:
the FID variant differs from torchvision's Inception3 in its average pools (padding excluded from the mean,
as TensorFlow) and in Mixed_7c's pool branch (max instead of average), and has 1008 classes.

Input: images [B, H, W, 3] already resized (299 x 299 for comparable figures) and scaled to [-1, 1]; see
latent_diffusion.evaluation.resizing for the resize conventions. Output: pool3 features [B, 2048] (FID, KID,
precision/recall) and the 1008 logits with and without the final bias (the Inception Score of the original
TensorFlow code, and torch-fidelity's, uses the unbiased ones).

Module names follow the PyTorch state dict ('Mixed_6b/branch7x7_2/conv', ...), so that the weights file
(`pt_inception-2015-12-05-6726825d.pth`) maps by name; see latent_diffusion.weights.inception.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
# BatchNorm epsilon of the TensorFlow graph (torchvision's BasicConv2d uses the same).
BN_EPS = 1e-3


class InceptionOutput(NamedTuple):
  pool3: jax.Array             # [B, 2048] final average pool
  logits_unbiased: jax.Array   # [B, 1008] pool3 @ fc kernel
  logits: jax.Array            # [B, 1008] logits_unbiased + fc bias


class FrozenBatchNorm(nn.Module):
  """Inference BatchNorm over the last axis; the running statistics are parameters (they are never updated)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    stat = lambda name, init: self.param(name, nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],))
    scale, bias = stat("scale", nn.initializers.ones), stat("bias", nn.initializers.zeros)
    mean, var = stat("mean", nn.initializers.zeros), stat("var", nn.initializers.ones)
    multiplier = scale * jax.lax.rsqrt(var + BN_EPS)
    return x * multiplier.astype(self.dtype) + (bias - mean * multiplier).astype(self.dtype)


class BasicConv2d(nn.Module):
  """Convolution without bias, frozen BatchNorm, ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (ph, pw), s = self.padding, self.stride
    x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)), use_bias=False,
                dtype=self.dtype, name="conv",
                kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(),
                                                         (None, None, "conv_in", "conv_out")))(x)
    return nn.relu(FrozenBatchNorm(self.dtype, name="bn")(x))


class Logits(nn.Module):
  """The 1008-way classifier: (x @ kernel, x @ kernel + bias) for x [B, 2048]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                        (x.shape[-1], 1008))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (1008,))
    unbiased = x @ kernel
    return unbiased, unbiased + bias


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the valid pixels only (TensorFlow's SAME pooling)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2) -> jax.Array:
  padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
  return nn.max_pool(x, (3, 3), (stride, stride), padding=padding)


class InceptionA(nn.Module):
  pool_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k, p, name: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
    b1 = c(64, (1, 1), (0, 0), "branch1x1")(x)
    b5 = c(64, (5, 5), (2, 2), "branch5x5_2")(c(48, (1, 1), (0, 0), "branch5x5_1")(x))
    b3 = c(64, (1, 1), (0, 0), "branch3x3dbl_1")(x)
    b3 = c(96, (3, 3), (1, 1), "branch3x3dbl_3")(c(96, (3, 3), (1, 1), "branch3x3dbl_2")(b3))
    bp = c(self.pool_features, (1, 1), (0, 0), "branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), stride=2, dtype=self.dtype, name="branch3x3")(x)
    bd = BasicConv2d(64, (1, 1), dtype=self.dtype, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), dtype=self.dtype, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), stride=2, dtype=self.dtype, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    c = lambda f, k, p, name: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorised 7x7
    b1 = c(192, (1, 1), (0, 0), "branch1x1")(x)
    b7 = c(c7, (1, 1), (0, 0), "branch7x7_1")(x)
    b7 = c(192, *col, "branch7x7_3")(c(c7, *row, "branch7x7_2")(b7))
    bd = c(c7, (1, 1), (0, 0), "branch7x7dbl_1")(x)
    for i, (f, kp) in enumerate([(c7, col), (c7, row), (c7, col), (192, row)], start=2):
      bd = c(f, *kp, f"branch7x7dbl_{i}")(bd)
    bp = c(192, (1, 1), (0, 0), "branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), dtype=self.dtype, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), stride=2, dtype=self.dtype, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), dtype=self.dtype, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), dtype=self.dtype, name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), dtype=self.dtype, name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), stride=2, dtype=self.dtype, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """pool='avg' (Mixed_7b) or 'max' (Mixed_7c: the FID graph's max pool, a quirk kept for comparability)."""
  pool: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k, p, name: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
    split = lambda h, prefix: [c(384, (1, 3), (0, 1), f"{prefix}a")(h), c(384, (3, 1), (1, 0), f"{prefix}b")(h)]
    b1 = c(320, (1, 1), (0, 0), "branch1x1")(x)
    b3 = split(c(384, (1, 1), (0, 0), "branch3x3_1")(x), "branch3x3_2")
    bd = c(384, (3, 3), (1, 1), "branch3x3dbl_2")(c(448, (1, 1), (0, 0), "branch3x3dbl_1")(x))
    bd = split(bd, "branch3x3dbl_3")
    pooled = _avg_pool_same(x) if self.pool == "avg" else _max_pool(x, stride=1)
    bp = c(192, (1, 1), (0, 0), "branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3: x [B, H, W, 3] in [-1, 1] (H, W >= 75; 299 for standard figures) -> InceptionOutput."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> InceptionOutput:
    d = self.dtype
    x = x.astype(d)
    x = BasicConv2d(32, (3, 3), stride=2, dtype=d, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), dtype=d, name="Conv2d_2a_3x3")(x)
    x = _max_pool(BasicConv2d(64, (3, 3), padding=(1, 1), dtype=d, name="Conv2d_2b_3x3")(x))
    x = BasicConv2d(80, (1, 1), dtype=d, name="Conv2d_3b_1x1")(x)
    x = _max_pool(BasicConv2d(192, (3, 3), dtype=d, name="Conv2d_4a_3x3")(x))
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, d, name=name)(x)
    x = InceptionB(d, name="Mixed_6a")(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(channels, d, name=name)(x)
    x = InceptionD(d, name="Mixed_7a")(x)
    x = InceptionE("avg", d, name="Mixed_7b")(x)
    x = InceptionE("max", d, name="Mixed_7c")(x)
    pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))                       # [B, 2048]
    unbiased, logits = Logits(name="fc")(pool3)
    return InceptionOutput(pool3, unbiased, logits)
