"""The latent-diffusion UNet (ADM-style ResBlocks, SpatialTransformer cross-attention), NHWC.

x_t [B, H, W, C] (+ concat channels), timesteps [B], optional context [B, L, D] and class labels
[B] -> model output [B, H, W, out_channels] (epsilon, v or x0 by the training target).

The options cover diffusers' UNet2DConditionModel (SD 1.x / 2.x) and UNet2DModel layouts;
latent_diffusion.weights.unet converts configs and weights in both directions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.layers import (AttentionBlock, Downsample, Dtype, ResnetBlock, SpatialTransformer,
                                            Upsample, conv, dense, group_norm, timestep_embedding)


# Rematerialisation by name (config.ldm.model.remat_policy): what each ResNet / attention block keeps
# for the backward pass. 'full' recomputes everything (least memory), 'dots' keeps matmul/conv outputs.
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class UNet(nn.Module):
  out_channels: int = 4
  # Channels of x plus concat channels; None: taken from the inputs (else they are checked against it).
  in_channels: int | None = None
  model_channels: int = 320
  channel_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  # Downsample rates (1 = input resolution) whose blocks get attention.
  attention_resolutions: tuple[int, ...] = (4, 2, 1)
  # Attention heads by count (one for all levels, or one per level; the mid block takes the last
  # level's), or by channels per head: exactly one of them is set.
  num_heads: int | tuple[int, ...] = -1
  num_head_channels: int = -1
  transformer_depth: int = 1
  # Width of the cross-attention context; None -> plain self-attention blocks.
  context_dim: int | None = None
  use_linear_projection: bool = False
  # Class-label embeddings (including a 'null' label for classifier-free guidance), or None.
  num_classes: int | None = None
  use_scale_shift_norm: bool = False
  # Mid block: attention between its two ResNets (with a GroupNorm in front of self-attention), and
  # the factor its residual sums are divided by.
  mid_attention: bool = True
  mid_attention_norm: bool = True
  mid_scale_factor: float = 1.0
  # Downsampling conv padding: 1 on every side, or 0 = one row/column at the bottom/right (DDPM).
  downsample_padding: int = 1
  # Sinusoidal timestep embedding: [cos, sin] (else [sin, cos]); frequencies 10000^(-i/(half - freq_shift)).
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  dropout: float = 0.0
  groups: int = 32
  eps: float = 1e-5
  # Compute dtype (e.g. bfloat16 on TPU/GPU); parameters stay float32.
  dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  # Kernels: attention (models.attention.ATTENTION_IMPLS) and dense-layer gradients (layers.LINEAR_IMPLS);
  # 'auto' picks by jax.default_backend() (CPU kernels on CPU, XLA's elsewhere).
  attention_impl: str = "auto"
  linear_impl: str = "auto"

  def _block(self, cls, static_argnums: tuple[int, ...] = ()):
    """`cls`, or `cls` rematerialised by remat_policy (static_argnums count self as 0)."""
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"Unknown remat_policy {self.remat_policy!r}; known: {sorted(REMAT_POLICIES)}.")
    if self.remat_policy == "none":
      return cls
    return nn.remat(cls, policy=REMAT_POLICIES[self.remat_policy], static_argnums=static_argnums)

  def _heads(self, channels: int, level: int = -1) -> tuple[int, int]:
    """(heads, head_dim) of attention over `channels` at resolution `level` (-1: the last, as the mid block)."""
    if (self.num_heads == -1) == (self.num_head_channels == -1):
      raise ValueError(f"Set exactly one of num_heads ({self.num_heads}) and num_head_channels "
                       f"({self.num_head_channels}) when attention_resolutions={self.attention_resolutions}.")
    if self.num_head_channels != -1:
      if channels % self.num_head_channels:
        raise ValueError(f"num_head_channels={self.num_head_channels} does not divide {channels} channels.")
      return channels // self.num_head_channels, self.num_head_channels
    heads = self.num_heads
    if isinstance(heads, tuple):
      if len(heads) != len(self.channel_mult):
        raise ValueError(f"num_heads={heads} needs one entry per level of channel_mult={self.channel_mult}.")
      heads = heads[level]
    if channels % heads:
      raise ValueError(f"num_heads={heads} does not divide {channels} channels.")
    return heads, channels // heads

  def _attention(self, h: jax.Array, context: jax.Array | None, level: int, name: str, **mid) -> jax.Array:
    heads, head_dim = self._heads(h.shape[-1], level)
    if self.context_dim is None:
      return self._block(AttentionBlock)(heads, head_dim, groups=self.groups, eps=self.eps, dtype=self.dtype,
                                         name=name, **mid, **self._kernels())(h)
    return self._block(SpatialTransformer)(heads, head_dim, depth=self.transformer_depth,
                                           use_linear_projection=self.use_linear_projection,
                                           groups=self.groups, dtype=self.dtype, name=name,
                                           **self._kernels())(h, context)

  def _kernels(self) -> dict:
    return {"attention_impl": self.attention_impl, "linear_impl": self.linear_impl}

  def _check_inputs(self, x, context, y, concat):
    channels = x.shape[-1] + (0 if concat is None else concat.shape[-1])
    if self.in_channels is not None and channels != self.in_channels:
      raise ValueError(f"Input has {channels} channels (x plus concat), the UNet was built for in_channels="
                       f"{self.in_channels}.")
    if self.context_dim is not None and not self.mid_attention_norm:
      raise ValueError("mid_attention_norm=False applies to self-attention only; cross-attention blocks always norm.")
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"downsample_padding={self.downsample_padding}; expected 1 (symmetric) or 0 (bottom/right).")
    levels = 2 ** (len(self.channel_mult) - 1)
    if x.shape[1] % levels or x.shape[2] % levels:
      raise ValueError(f"Input size {x.shape[1:3]} is not divisible by 2**(len(channel_mult)-1) = {levels}.")
    if context is not None and self.context_dim is None:
      raise ValueError("A context was given to a UNet without cross-attention (context_dim is None).")
    if context is not None and context.shape[-1] != self.context_dim:
      raise ValueError(f"Context width {context.shape[-1]} != context_dim {self.context_dim}.")
    if (y is None) != (self.num_classes is None):
      raise ValueError(f"Class labels y must be given exactly when num_classes is set (num_classes={self.num_classes}, "
                       f"y {'missing' if y is None else 'given'}).")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, *, context: jax.Array | None = None, y: jax.Array | None = None,
               concat: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    self._check_inputs(x, context, y, concat)
    mc = self.model_channels
    temb = timestep_embedding(jnp.broadcast_to(t, x.shape[:1]), mc, self.flip_sin_to_cos, self.freq_shift)
    temb = dense(4 * mc, name="time_embed_0", dtype=self.dtype, linear_impl=self.linear_impl)(temb)
    temb = dense(4 * mc, ("mlp", "embed"), name="time_embed_1", dtype=self.dtype, linear_impl=self.linear_impl)(
        nn.silu(temb))
    if self.num_classes is not None:
      table = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
      temb = temb + nn.Embed(self.num_classes, 4 * mc, embedding_init=table, dtype=self.dtype, name="label_emb")(y)
    if concat is not None:
      x = jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)

    resnet = self._block(ResnetBlock, static_argnums=(3,))   # (self, x, temb, deterministic)
    res = lambda ch, name, scale=1.0: resnet(ch, self.dropout, self.use_scale_shift_norm, self.groups,
                                             self.eps, self.dtype, scale, self.linear_impl, name=name)
    h = conv(mc, name="conv_in", dtype=self.dtype)(x)
    skips, rate = [h], 1
    for level, mult in enumerate(self.channel_mult):
      for j in range(self.num_res_blocks):
        h = res(mc * mult, f"down_{level}_res_{j}")(h, temb, deterministic)
        if rate in self.attention_resolutions:
          h = self._attention(h, context, level, f"down_{level}_attn_{j}")
        skips.append(h)
      if level < len(self.channel_mult) - 1:
        h = Downsample(mc * mult, self.downsample_padding == 0, self.dtype, name=f"down_{level}_downsample")(h)
        skips.append(h)
        rate *= 2

    top = mc * self.channel_mult[-1]
    h = res(top, "mid_res_0", self.mid_scale_factor)(h, temb, deterministic)
    if self.mid_attention:
      # Only self-attention blocks take the norm switch and the scale (as diffusers' UNetMidBlock2D).
      mid = {} if self.context_dim is not None else dict(norm=self.mid_attention_norm,
                                                         output_scale_factor=self.mid_scale_factor)
      h = self._attention(h, context, -1, "mid_attn", **mid)
    h = res(top, "mid_res_1", self.mid_scale_factor)(h, temb, deterministic)

    for level in reversed(range(len(self.channel_mult))):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(mc * self.channel_mult[level], f"up_{level}_res_{j}")(h, temb, deterministic)
        if rate in self.attention_resolutions:
          h = self._attention(h, context, level, f"up_{level}_attn_{j}")
      if level > 0:
        h = Upsample(mc * self.channel_mult[level], dtype=self.dtype, name=f"up_{level}_upsample")(h)
        rate //= 2

    h = nn.silu(group_norm(self.groups, self.eps, name="norm_out", dtype=self.dtype)(h))
    return conv(self.out_channels, name="conv_out", dtype=self.dtype, zero_init=True)(h)
