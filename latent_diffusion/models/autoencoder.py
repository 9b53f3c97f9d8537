"""The KL-regularized perceptual autoencoder of LDM stage 1 (NHWC).

Images [B, H, W, C] in [-1, 1] <-> latents [B, H/f, W/f, embed_dim] with f = 2**(len(ch_mult) - 1).
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.layers import AttentionBlock, Downsample, Dtype, ResnetBlock, Upsample, conv, group_norm


@flax.struct.dataclass
class DiagonalGaussian:
  """The posterior q(z | x) = N(mean, exp(logvar)), elementwise over [B, h, w, c]."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, mean: jax.Array, logvar: jax.Array) -> "DiagonalGaussian":
    """The posterior with logvar clipped to [-30, 20] (numerically safe exp)."""
    return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per example [B], summed over h, w, c (nats)."""
    return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=(1, 2, 3))


def _mid_block(x, name_prefix: str, channels: int, groups: int, eps: float, dropout: float, dtype: Dtype,
               deterministic: bool):
  """ResNet, single-head self-attention, ResNet at the lowest resolution."""
  res = lambda i: ResnetBlock(channels, dropout, groups=groups, eps=eps, dtype=dtype, name=f"{name_prefix}_res_{i}")
  x = res(0)(x, deterministic=deterministic)
  x = AttentionBlock(1, channels, groups=groups, eps=eps, dtype=dtype, name=f"{name_prefix}_attn")(x)
  return res(1)(x, deterministic=deterministic)


class Encoder(nn.Module):
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  z_channels: int = 4
  double_z: bool = True
  groups: int = 32
  eps: float = 1e-6
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """[B, H, W, C] -> [B, H/f, W/f, 2 * z_channels (or z_channels)]."""
    h = conv(self.ch, name="conv_in", dtype=self.dtype)(x)
    for level, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, self.dropout, groups=self.groups, eps=self.eps, dtype=self.dtype,
                        name=f"down_{level}_res_{j}")(h, deterministic=deterministic)
      if level < len(self.ch_mult) - 1:
        h = Downsample(self.ch * mult, asymmetric_padding=True, dtype=self.dtype, name=f"down_{level}_downsample")(h)
    h = _mid_block(h, "mid", self.ch * self.ch_mult[-1], self.groups, self.eps, self.dropout, self.dtype, deterministic)
    h = nn.silu(group_norm(self.groups, self.eps, name="norm_out", dtype=self.dtype)(h))
    return conv(2 * self.z_channels if self.double_z else self.z_channels, name="conv_out", dtype=self.dtype)(h)


class Decoder(nn.Module):
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  out_channels: int = 3
  groups: int = 32
  eps: float = 1e-6
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
    """[B, h, w, z_channels] -> [B, h*f, w*f, out_channels]."""
    top = self.ch * self.ch_mult[-1]
    h = conv(top, name="conv_in", dtype=self.dtype)(z)
    h = _mid_block(h, "mid", top, self.groups, self.eps, self.dropout, self.dtype, deterministic)
    for level in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * self.ch_mult[level], self.dropout, groups=self.groups, eps=self.eps,
                        dtype=self.dtype, name=f"up_{level}_res_{j}")(h, deterministic=deterministic)
      if level > 0:
        h = Upsample(self.ch * self.ch_mult[level], dtype=self.dtype, name=f"up_{level}_upsample")(h)
    h = nn.silu(group_norm(self.groups, self.eps, name="norm_out", dtype=self.dtype)(h))
    return conv(self.out_channels, name="conv_out", dtype=self.dtype)(h)


class AutoencoderKL(nn.Module):
  """Encoder -> 1x1 quant conv -> DiagonalGaussian;  z -> 1x1 post-quant conv -> Decoder."""
  in_channels: int = 3
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  z_channels: int = 4
  embed_dim: int = 4
  groups: int = 32
  eps: float = 1e-6
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  def setup(self):
    if len(self.ch_mult) > 6:
      raise ValueError(f"ch_mult={self.ch_mult} gives f={2 ** (len(self.ch_mult) - 1)}; at most f=32 is supported.")
    shared = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks, groups=self.groups,
                  eps=self.eps, dropout=self.dropout, dtype=self.dtype)
    self.encoder = Encoder(z_channels=self.z_channels, double_z=True, **shared)
    self.decoder = Decoder(out_channels=self.in_channels, **shared)
    self.quant_conv = conv(2 * self.embed_dim, kernel=1, padding=0, name="quant_conv", dtype=self.dtype)
    self.post_quant_conv = conv(self.z_channels, kernel=1, padding=0, name="post_quant_conv", dtype=self.dtype)

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  def encode(self, x: jax.Array, deterministic: bool = True) -> DiagonalGaussian:
    """x [B, H, W, in_channels] in [-1, 1] -> q(z | x) over [B, H/f, W/f, embed_dim]."""
    f = self.downsampling_factor
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"Image size {x.shape[1:3]} is not divisible by the downsampling factor f={f}.")
    moments = self.quant_conv(self.encoder(x, deterministic))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return DiagonalGaussian.from_moments(mean, logvar)

  def decode(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
    """z [B, h, w, embed_dim] -> images [B, h*f, w*f, in_channels] (unclipped)."""
    return self.decoder(self.post_quant_conv(z), deterministic)

  def __call__(self, x: jax.Array, sample_posterior: bool = True, deterministic: bool = True):
    """(reconstruction [B, H, W, C], posterior); sampling uses the 'sample' rng stream."""
    posterior = self.encode(x, deterministic)
    z = posterior.sample(self.make_rng("sample")) if sample_posterior else posterior.mode()
    return self.decode(z, deterministic), posterior
