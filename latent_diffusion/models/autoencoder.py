"""The perceptual autoencoders of LDM stage 1 (NHWC): KL-regularized and vector-quantized.

Images [B, H, W, C] in [-1, 1] <-> latents [B, H/f, W/f, embed_dim] with f = 2**(len(ch_mult) - 1).
Level l of the encoder and decoder is ch * ch_mult[l] channels wide (diffusers' block_out_channels).
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

  @classmethod
  def point_mass(cls, mean: jax.Array) -> "DiagonalGaussian":
    """The deterministic 'posterior' at mean (logvar -inf): sample() and mode() both return mean exactly."""
    return cls(mean=mean, logvar=jnp.full_like(mean, -jnp.inf))

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


def _mid_block(x, name_prefix: str, channels: int, groups: int, eps: float, dropout: float, attention: bool,
               dtype: Dtype, deterministic: bool):
  """ResNet, single-head self-attention (if `attention`), ResNet at the lowest resolution."""
  res = lambda i: ResnetBlock(channels, dropout, groups=groups, eps=eps, dtype=dtype, name=f"{name_prefix}_res_{i}")
  x = res(0)(x, deterministic=deterministic)
  if attention:
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
  mid_attention: bool = True
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
    h = _mid_block(h, "mid", self.ch * self.ch_mult[-1], self.groups, self.eps, self.dropout, self.mid_attention,
                   self.dtype, deterministic)
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
  mid_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
    """[B, h, w, z_channels] -> [B, h*f, w*f, out_channels]."""
    top = self.ch * self.ch_mult[-1]
    h = conv(top, name="conv_in", dtype=self.dtype)(z)
    h = _mid_block(h, "mid", top, self.groups, self.eps, self.dropout, self.mid_attention, self.dtype, deterministic)
    for level in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * self.ch_mult[level], self.dropout, groups=self.groups, eps=self.eps,
                        dtype=self.dtype, name=f"up_{level}_res_{j}")(h, deterministic=deterministic)
      if level > 0:
        h = Upsample(self.ch * self.ch_mult[level], dtype=self.dtype, name=f"up_{level}_upsample")(h)
    h = nn.silu(group_norm(self.groups, self.eps, name="norm_out", dtype=self.dtype)(h))
    return conv(self.out_channels, name="conv_out", dtype=self.dtype)(h)


class _ConvAutoencoder(nn.Module):
  """Fields and helpers shared by both autoencoders: encoder/decoder widths, levels, image checks.

  z_channels is the encoder output / decoder input width, embed_dim the latent (or codebook) width
  between the 1x1 quant convs; out_channels defaults to in_channels.
  """
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
  out_channels: int | None = None
  mid_attention: bool = True

  def _coders(self, double_z: bool) -> tuple[Encoder, Decoder]:
    if len(self.ch_mult) > 6:
      raise ValueError(f"ch_mult={self.ch_mult} gives f={2 ** (len(self.ch_mult) - 1)}; at most f=32 is supported.")
    shared = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks, groups=self.groups,
                  eps=self.eps, dropout=self.dropout, mid_attention=self.mid_attention, dtype=self.dtype)
    out_channels = self.in_channels if self.out_channels is None else self.out_channels
    encoder = Encoder(z_channels=self.z_channels, double_z=double_z, **shared)
    return encoder, Decoder(out_channels=out_channels, **shared)

  def _quant_conv(self, features: int, name: str) -> nn.Conv:
    return conv(features, kernel=1, padding=0, name=name, dtype=self.dtype)

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  def _check_image(self, x: jax.Array):
    f = self.downsampling_factor
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"Image size {x.shape[1:3]} is not divisible by the downsampling factor f={f}.")


class AutoencoderKL(_ConvAutoencoder):
  """Encoder -> 1x1 quant conv -> DiagonalGaussian;  z -> 1x1 post-quant conv -> Decoder.

  Without a quant conv (use_quant_conv=False, as SD3 / Flux) the encoder's moments are the
  posterior's, so embed_dim must equal z_channels; likewise for use_post_quant_conv.
  """
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True

  def setup(self):
    if self.embed_dim != self.z_channels and not (self.use_quant_conv and self.use_post_quant_conv):
      raise ValueError(f"embed_dim={self.embed_dim} != z_channels={self.z_channels} needs both quant convs "
                       f"(use_quant_conv={self.use_quant_conv}, use_post_quant_conv={self.use_post_quant_conv}).")
    self.encoder, self.decoder = self._coders(double_z=True)
    self.quant_conv = self._quant_conv(2 * self.embed_dim, "quant_conv") if self.use_quant_conv else None
    self.post_quant_conv = self._quant_conv(self.z_channels, "post_quant_conv") if self.use_post_quant_conv else None

  def encode(self, x: jax.Array, deterministic: bool = True) -> DiagonalGaussian:
    """x [B, H, W, in_channels] in [-1, 1] -> q(z | x) over [B, H/f, W/f, embed_dim]."""
    self._check_image(x)
    moments = self.encoder(x, deterministic)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return DiagonalGaussian.from_moments(mean, logvar)

  def latent_distribution(self, x: jax.Array, deterministic: bool = True) -> DiagonalGaussian:
    """What stage 2 diffuses (shared by both autoencoders): here q(z | x), see `encode`."""
    return self.encode(x, deterministic)

  def decode(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
    """z [B, h, w, embed_dim] -> images [B, h*f, w*f, out_channels] (unclipped)."""
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z, deterministic)

  def __call__(self, x: jax.Array, sample_posterior: bool = True, deterministic: bool = True):
    """(reconstruction [B, H, W, C], posterior); sampling uses the 'sample' rng stream."""
    posterior = self.encode(x, deterministic)
    z = posterior.sample(self.make_rng("sample")) if sample_posterior else posterior.mode()
    return self.decode(z, deterministic), posterior


@flax.struct.dataclass
class Quantized:
  """The vector quantizer's output for latents h [B, h, w, d].

  latents: the nearest codes [B, h, w, d], valued as the codes but with the straight-through
    gradient of h (d latents / d h = I).
  loss: the scalar codebook + beta-weighted commitment loss (mean squared error terms).
  indices: the codebook indices [B, h, w] (int32).
  """
  latents: jax.Array
  loss: jax.Array
  indices: jax.Array


def _codebook_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
  # U(-1/K, 1/K) for K codes, as taming-transformers and diffusers initialise the codebook.
  return jax.random.uniform(key, shape, dtype, -1.0 / shape[0], 1.0 / shape[0])


class VectorQuantizer(nn.Module):
  """Nearest-code quantization (L2) with a codebook 'embedding' [num_embeddings, dim] (VQ-VAE).

  The loss has a term pulling codes to the (stopped) latents and one pulling latents to the (stopped)
  codes. With `legacy` (taming-transformers, diffusers, the LDM checkpoints) beta weights the first:
  loss = ||sg(q) - h||^2 + beta ||q - sg(h)||^2; otherwise beta weights the commitment term as in
  the VQ-VAE paper: loss = beta ||sg(q) - h||^2 + ||q - sg(h)||^2 (both means over elements).
  """
  num_embeddings: int
  dim: int
  beta: float = 0.25
  legacy: bool = True

  def setup(self):
    self.embedding = self.param("embedding", nn.with_logical_partitioning(_codebook_init, ("vocab", "embed")),
                                (self.num_embeddings, self.dim))

  def __call__(self, h: jax.Array) -> Quantized:
    """h [B, h, w, dim] -> Quantized; distances, codes and loss in float32."""
    z = h.astype(jnp.float32)
    codebook = jnp.asarray(self.embedding, jnp.float32)
    # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; HIGHEST precision so that bfloat16 matmul passes (TPU
    # default) do not reorder near-equidistant codes.
    cross = jnp.einsum("bhwd,kd->bhwk", z, codebook, precision=jax.lax.Precision.HIGHEST)
    distances = jnp.sum(z**2, axis=-1, keepdims=True) - 2.0 * cross + jnp.sum(codebook**2, axis=-1)
    indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)      # [B, h, w]
    codes = codebook[indices]                                        # [B, h, w, dim]
    to_codes = jnp.mean(jnp.square(jax.lax.stop_gradient(codes) - z))
    to_latents = jnp.mean(jnp.square(codes - jax.lax.stop_gradient(z)))
    loss = to_codes + self.beta * to_latents if self.legacy else self.beta * to_codes + to_latents
    latents = z + jax.lax.stop_gradient(codes - z)
    return Quantized(latents=latents.astype(h.dtype), loss=loss, indices=indices)

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Codebook indices [...] -> codes [..., dim]."""
    return jnp.asarray(self.embedding)[indices]


class VQModel(_ConvAutoencoder):
  """Encoder -> 1x1 quant conv -> VectorQuantizer -> 1x1 post-quant conv -> Decoder (LDM's VQ-f4/f8/f16).

  embed_dim is the codebook vector width, z_channels the encoder output / decoder input width.
  Stage-1 training minimises reconstruction + Quantized.loss from `__call__`.
  """
  num_embeddings: int = 8192
  beta: float = 0.25
  legacy: bool = True

  def setup(self):
    self.encoder, self.decoder = self._coders(double_z=False)
    self.quant_conv = self._quant_conv(self.embed_dim, "quant_conv")
    self.quantizer = VectorQuantizer(self.num_embeddings, self.embed_dim, self.beta, self.legacy, name="quantize")
    self.post_quant_conv = self._quant_conv(self.z_channels, "post_quant_conv")

  def encode(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x [B, H, W, in_channels] in [-1, 1] -> pre-quantization latents h [B, H/f, W/f, embed_dim]."""
    self._check_image(x)
    return self.quant_conv(self.encoder(x, deterministic))

  def latent_distribution(self, x: jax.Array, deterministic: bool = True) -> DiagonalGaussian:
    """What stage 2 diffuses (shared by both autoencoders): the pre-quantization latents h as a point mass.
    As in the paper's VQ-regularized LDMs, diffusion runs on h and `decode` quantizes its samples."""
    return DiagonalGaussian.point_mass(self.encode(x, deterministic))

  def quantize(self, h: jax.Array) -> Quantized:
    """Latents h [B, h, w, embed_dim] -> their nearest codes, the VQ loss and the code indices."""
    return self.quantizer(h)

  def decode(self, h: jax.Array, force_not_quantize: bool = False, deterministic: bool = True) -> jax.Array:
    """h [B, h, w, embed_dim] -> images [B, h*f, w*f, out_channels]; h is quantized first unless told not to."""
    if not force_not_quantize:
      h = self.quantizer(h).latents
    return self.decoder(self.post_quant_conv(h), deterministic)

  def decode_indices(self, indices: jax.Array, deterministic: bool = True) -> jax.Array:
    """Codebook indices [B, h, w] -> images [B, h*f, w*f, out_channels]."""
    return self.decode(self.quantizer.lookup(indices), force_not_quantize=True, deterministic=deterministic)

  def __call__(self, x: jax.Array, deterministic: bool = True) -> tuple[jax.Array, Quantized]:
    """(reconstruction [B, H, W, C], Quantized of the encoded x) for stage-1 training."""
    quantized = self.quantizer(self.encode(x, deterministic))
    return self.decode(quantized.latents, force_not_quantize=True, deterministic=deterministic), quantized
