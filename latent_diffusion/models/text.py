"""Text encoders for conditioning: the CLIP text transformer (Stable Diffusion 1.x) and BERT.

Both map token ids [B, L] (int) to hidden states [B, L, D] and are numerically the encoders of
transformers' CLIPTextModel and BertModel in inference (no dropout: the encoders are used frozen).
Parameters carry logical axis names: tables ('vocab', 'embed'), attention kernels ('embed', 'heads')
and ('heads', 'embed'), MLP kernels ('embed', 'mlp') and ('mlp', 'embed'), norms ('norm',).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion.models.layers import dense, gelu, layer_norm

Dtype = Any

# transformers' `hidden_act` names -> the same function in JAX.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
    "relu": nn.relu,
}

# The legacy CLIP configs (before transformers PR #24773, e.g. Stable Diffusion 1.x's) say eos_token_id = 2; for
# them the end-of-text position is where the largest token id sits, since <|endoftext|> is the last entry of the vocab.
LEGACY_CLIP_EOS_TOKEN_ID = 2


class TextEncoding(NamedTuple):
  """hidden_states [B, L, D]; pooled [B, D] (None for a BERT without pooler)."""
  hidden_states: jax.Array
  pooled: jax.Array | None


def _embed(num: int, features: int, name: str, dtype: Dtype) -> nn.Embed:
  init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
  return nn.Embed(num, features, dtype=dtype, embedding_init=init, name=name)


class SelfAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections; mask [B or 1, 1, L, L] bool, True = attend."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    b, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"hidden size {width} is not divisible by num_heads={self.num_heads}.")
    heads = lambda a: a.reshape(b, length, self.num_heads, width // self.num_heads)  # [B, L, N, H]
    proj = lambda name: heads(dense(width, ("embed", "heads"), name=name, dtype=self.dtype)(x))
    out = jax.nn.dot_product_attention(proj("q_proj"), proj("k_proj"), proj("v_proj"), mask=mask)
    return dense(width, ("heads", "embed"), name="out_proj", dtype=self.dtype)(out.reshape(b, length, width))


class MLP(nn.Module):
  """fc2(act(fc1(x))), widths D -> intermediate -> D."""
  intermediate_size: int
  activation: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"hidden_act={self.activation!r} is not supported; known: {sorted(ACTIVATIONS)}.")
    h = ACTIVATIONS[self.activation](dense(self.intermediate_size, ("embed", "mlp"), name="fc1", dtype=self.dtype)(x))
    return dense(x.shape[-1], ("mlp", "embed"), name="fc2", dtype=self.dtype)(h)


class TransformerLayer(nn.Module):
  """Self-attention then MLP, each with a residual; x [B, L, D].

  pre_norm (CLIP): x + attn(LN(x)), then x + mlp(LN(x)); else post-norm (BERT):
  LN(x + attn(x)), then LN(x + mlp(x)).
  """
  num_heads: int
  intermediate_size: int
  activation: str
  layer_norm_eps: float
  pre_norm: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    sublayers = ((SelfAttention(self.num_heads, self.dtype, name="attention"), lambda h: (h, mask), "attention_norm"),
                 (MLP(self.intermediate_size, self.activation, self.dtype, name="mlp"), lambda h: (h,), "mlp_norm"))
    for sublayer, inputs, norm_name in sublayers:
      norm = layer_norm(self.layer_norm_eps, name=norm_name, dtype=self.dtype)
      x = x + sublayer(*inputs(norm(x))) if self.pre_norm else norm(x + sublayer(*inputs(x)))
    return x


def _check_lengths(length: int, max_positions: int, skip_last_layers: int, num_layers: int) -> None:
  if length > max_positions:
    raise ValueError(f"{length} tokens exceed max_position_embeddings={max_positions}.")
  if not 0 <= skip_last_layers < num_layers:
    raise ValueError(f"skip_last_layers={skip_last_layers} must be in [0, {num_layers}) for {num_layers} layers.")


def _padding_mask(attention_mask: jax.Array | None, shape: tuple[int, int]) -> jax.Array:
  """Key mask [B, 1, 1, L] (True = real token) from a 0/1 padding mask [B, L]; all True when None."""
  if attention_mask is None:
    return jnp.ones((shape[0], 1, 1, shape[1]), bool)
  return jnp.asarray(attention_mask).astype(bool)[:, None, None, :]


class CLIPTextTransformer(nn.Module):
  """CLIP's text tower: token + learned position embeddings, pre-LN causal layers, final LayerNorm.

  __call__(input_ids [B, L] int, attention_mask [B, L] 0/1 or None, skip_last_layers) -> TextEncoding:
    hidden_states: final LayerNorm of the output of layer num_layers - skip_last_layers (0: transformers'
      last_hidden_state; k: diffusers' prompt embeddings for `clip_skip=k`, e.g. 1 = the penultimate layer);
    pooled: the last hidden state (all layers) at the end-of-text position (transformers' pooler_output).
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_layers: int = 12
  num_heads: int = 8
  max_position_embeddings: int = 77
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               skip_last_layers: int = 0) -> TextEncoding:
    b, length = input_ids.shape
    _check_lengths(length, self.max_position_embeddings, skip_last_layers, self.num_layers)
    x = _embed(self.vocab_size, self.hidden_size, "token_embedding", self.dtype)(input_ids)
    x = x + _embed(self.max_position_embeddings, self.hidden_size, "position_embedding", self.dtype)(
        jnp.arange(length))[None]                                             # [B, L, D]
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]           # [1, 1, L, L]
    mask = causal & _padding_mask(attention_mask, (b, length))
    final_norm = layer_norm(self.layer_norm_eps, name="final_layer_norm", dtype=self.dtype)
    skipped = None
    for i in range(self.num_layers):
      if i == self.num_layers - skip_last_layers:
        skipped = final_norm(x)
      x = TransformerLayer(self.num_heads, self.intermediate_size, self.activation, self.layer_norm_eps,
                           pre_norm=True, dtype=self.dtype, name=f"layers_{i}")(x, mask)
    x = final_norm(x)
    if self.eos_token_id == LEGACY_CLIP_EOS_TOKEN_ID:
      eos = jnp.argmax(input_ids, axis=-1)
    else:  # first occurrence (padding may reuse the end-of-text id); position 0 if absent, as transformers
      eos = jnp.argmax(input_ids == self.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]      # [B, D]
    return TextEncoding(x if skipped is None else skipped, pooled)


class BertEncoder(nn.Module):
  """BERT: word + position + token-type embeddings and LayerNorm, post-LN bidirectional layers, optional pooler.

  __call__(input_ids [B, L] int, attention_mask [B, L] 0/1 or None, token_type_ids [B, L] or None (zeros),
  skip_last_layers) -> TextEncoding(hidden_states = the output of layer num_layers - skip_last_layers (0:
  transformers' last_hidden_state), pooled = tanh(dense(last layer's h[:, 0])) or None).
  Padding positions attend to the real tokens like any other query (their outputs are defined, not zero).
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  activation: str = "gelu"
  layer_norm_eps: float = 1e-12
  add_pooling_layer: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, skip_last_layers: int = 0) -> TextEncoding:
    b, length = input_ids.shape
    _check_lengths(length, self.max_position_embeddings, skip_last_layers, self.num_layers)
    token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    x = (_embed(self.vocab_size, self.hidden_size, "word_embeddings", self.dtype)(input_ids)
         + _embed(self.type_vocab_size, self.hidden_size, "token_type_embeddings", self.dtype)(token_type_ids)
         + _embed(self.max_position_embeddings, self.hidden_size, "position_embeddings", self.dtype)(
             jnp.arange(length))[None])                                        # [B, L, D]
    x = layer_norm(self.layer_norm_eps, name="embeddings_layer_norm", dtype=self.dtype)(x)
    mask = _padding_mask(attention_mask, (b, length))                          # [B, 1, 1, L]
    skipped = None
    for i in range(self.num_layers):
      if i == self.num_layers - skip_last_layers:
        skipped = x
      x = TransformerLayer(self.num_heads, self.intermediate_size, self.activation, self.layer_norm_eps,
                           pre_norm=False, dtype=self.dtype, name=f"layers_{i}")(x, mask)
    pooled = None
    if self.add_pooling_layer:
      pooled = jnp.tanh(dense(self.hidden_size, ("embed", "mlp"), name="pooler", dtype=self.dtype)(x[:, 0]))
    return TextEncoding(x if skipped is None else skipped, pooled)
