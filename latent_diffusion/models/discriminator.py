"""The PatchGAN discriminator of LDM's stage 1 (pix2pix's NLayerDiscriminator, as taming-transformers uses it), NHWC.

conv 4x4 stride 2 -> LeakyReLU(0.2), then num_layers - 1 times conv 4x4 stride 2 -> BatchNorm -> LeakyReLU,
then conv 4x4 stride 1 -> BatchNorm -> LeakyReLU, then conv 4x4 stride 1 to one logit per patch; every
convolution pads by 1 and the widths are ch * min(2**n, 8). With num_layers=3 a 256x256 image gives
30x30 logits, each seeing a 70x70 patch. Sides of at least 3 * 2**num_layers pixels leave logits (12 for
num_layers=2, 24 for 3).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.layers import Dtype

# pix2pix's weights_init: convolutions N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0.
_kernel_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "conv_in", "conv_out"))
_bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",))


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BatchStatNorm(nn.Module):
  """BatchNorm2d as the discriminator uses it in training: batch statistics over [B, H, W] (biased variance),
  learned scale and bias. No running averages: the discriminator is only ever applied in training mode.
  Under a sharded batch the means are over the global batch (every device sees the same statistics)."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(_scale_init, ("norm",)), (features,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (features,))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
    return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)


class NLayerDiscriminator(nn.Module):
  """Images [B, H, W, C] in [-1, 1] -> patch logits [B, h, w, 1] (float32)."""
  ch: int = 64
  num_layers: int = 3
  dtype: Dtype = jnp.float32

  def _conv(self, features: int, stride: int, use_bias: bool, name: str) -> nn.Conv:
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=use_bias,
                   dtype=self.dtype, kernel_init=_kernel_init, bias_init=_bias_init, name=name)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.leaky_relu(self._conv(self.ch, 2, True, "conv_0")(x), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      h = self._conv(self.ch * min(2 ** n, 8), stride, False, f"conv_{n}")(h)
      h = nn.leaky_relu(BatchStatNorm(dtype=self.dtype, name=f"norm_{n}")(h), 0.2)
    logits = self._conv(1, 1, True, "conv_out")(h)
    if 0 in logits.shape:
      raise ValueError(f"Images of {x.shape[1]}x{x.shape[2]} are too small for a discriminator with num_layers="
                       f"{self.num_layers} (no logits left); lower config.autoencoder.discriminator.num_layers.")
    return logits.astype(jnp.float32)
