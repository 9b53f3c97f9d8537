"""CLIP's vision tower (ViT), numerically transformers' CLIPVisionTransformer in inference, NHWC.

pixel_values [B, H, W, 3] (resized to image_size, normalised with CLIP's mean / std) -> pooled [B, D]: the
final-LayerNormed class token (transformers' pooler_output). With CLIPModel's visual_projection it gives the
image embedding of CLIP score; the text side is models.text.CLIPTextTransformer.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.layers import layer_norm
from latent_diffusion.models.text import TransformerLayer, _embed

Dtype = Any


class CLIPVisionTransformer(nn.Module):
  """Patch embedding (no bias) + class token + learned positions, pre-LayerNorm, pre-norm layers, pooled class token."""
  image_size: int = 224
  patch_size: int = 32
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    b, h, w, _ = pixel_values.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(f"CLIP vision input is {h}x{w}; this model takes {self.image_size}x{self.image_size}.")
    p = self.patch_size
    patches = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                      name="patch_embedding",
                      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                               (None, None, "conv_in", "embed")))(pixel_values)
    patches = patches.reshape(b, -1, self.hidden_size)                                  # [B, N, D]
    class_embedding = self.param("class_embedding",
                                 nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                                 (self.hidden_size,))
    x = jnp.concatenate([jnp.broadcast_to(class_embedding.astype(patches.dtype), (b, 1, self.hidden_size)), patches],
                        axis=1)                                                         # [B, N + 1, D]
    x = x + _embed(x.shape[1], self.hidden_size, "position_embedding", self.dtype)(jnp.arange(x.shape[1]))[None]
    x = layer_norm(self.layer_norm_eps, name="pre_layrnorm", dtype=self.dtype)(x)
    mask = jnp.ones((1, 1, 1, x.shape[1]), bool)
    for i in range(self.num_layers):
      x = TransformerLayer(self.num_heads, self.intermediate_size, self.activation, self.layer_norm_eps,
                           pre_norm=True, dtype=self.dtype, name=f"layers_{i}")(x, mask)
    return layer_norm(self.layer_norm_eps, name="post_layernorm", dtype=self.dtype)(x[:, 0])
