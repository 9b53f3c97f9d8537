"""Shared blocks: attention against a plain einsum reference, timestep embedding, logical names."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion.models import layers


def test_multi_head_attention_matches_softmax_reference(random_params):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  attention = layers.MultiHeadAttention(num_heads=2, head_dim=4)
  params = random_params(attention, x, context)
  out = attention.apply(params, x, context)
  p = params["params"]
  q = (x @ p["to_q"]["kernel"]).reshape(2, 6, 2, 4)
  k = (context @ p["to_k"]["kernel"]).reshape(2, 5, 2, 4)
  v = (context @ p["to_v"]["kernel"]).reshape(2, 5, 2, 4)
  weights = jax.nn.softmax(jnp.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(4), axis=-1)
  ref = jnp.einsum("bnqk,bknh->bqnh", weights, v).reshape(2, 6, 8) @ p["to_out"]["kernel"] + p["to_out"]["bias"]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert "bias" not in p["to_q"]  # cross-attention projections have no bias (as LDM / diffusers)


def test_self_attention_projects_q_k_v_together_with_the_same_weights(random_params):
  """Self-attention runs to_q / to_k / to_v as one matmul; the result equals the three projections."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)
  attention = layers.MultiHeadAttention(num_heads=2, head_dim=4, qkv_bias=True)
  params = random_params(attention, x)
  p = params["params"]
  proj = lambda name: (x @ p[name]["kernel"] + p[name]["bias"]).reshape(2, 6, 2, 4)
  weights = jax.nn.softmax(jnp.einsum("bqnh,bknh->bnqk", proj("to_q"), proj("to_k")) / 2.0, axis=-1)
  ref = jnp.einsum("bnqk,bknh->bqnh", weights, proj("to_v")).reshape(2, 6, 8) @ p["to_out"]["kernel"]
  np.testing.assert_allclose(attention.apply(params, x), ref + p["to_out"]["bias"], rtol=1e-5, atol=1e-6)


def test_linear_gradients_equal_autodiff_of_a_matmul():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
  grads = [jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * cotangent), argnums=(0, 1))(x, kernel)
           for f in (layers.linear, jnp.dot)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="dimension numbers"):
    layers._linear_dot_general(x, kernel.T, (((2,), (1,)), ((), ())))


def test_linear_impls_give_the_same_block_and_gradients(random_params):
  """A transformer block with dense layers by XLA's autodiff and by the CPU custom VJP: same values, same grads."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  blocks = {impl: layers.BasicTransformerBlock(num_heads=2, head_dim=8, linear_impl=impl) for impl in ("xla", "cpu_flat")}
  params = random_params(blocks["xla"], x, context)
  loss = lambda p, block: jnp.sum(jnp.sin(block.apply(p, x, context)))
  (value_xla, grad_xla), (value_flat, grad_flat) = (jax.value_and_grad(loss)(params, blocks[i]) for i in blocks)
  np.testing.assert_allclose(value_flat, value_xla, rtol=1e-6)
  # Relative error per parameter: float32 rounding only (xla runs q, k and v as three matmuls, cpu_flat as one).
  for got, want in zip(jax.tree.leaves(grad_flat), jax.tree.leaves(grad_xla)):
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
  assert layers.resolve_linear_impl("auto") == "cpu_flat"       # this CPU
  with pytest.raises(ValueError, match="linear_impl 'fast'"):
    layers.resolve_linear_impl("fast")


def test_gelu_is_the_exact_erf_gelu():
  x = jnp.linspace(-12.0, 12.0, 2001)
  np.testing.assert_allclose(layers.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(layers.gelu))(x),
                             jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), rtol=1e-5, atol=1e-6)


def test_timestep_embedding_closed_form():
  t = jnp.array([0, 1, 500])
  emb = layers.timestep_embedding(t, 8)
  freqs = np.exp(-math.log(10000.0) * np.arange(4) / 4)
  args = np.array([0, 1, 500])[:, None] * freqs[None]
  np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], axis=1), rtol=1e-5, atol=1e-5)
  unflipped = layers.timestep_embedding(t, 8, flip_sin_to_cos=False)
  np.testing.assert_allclose(unflipped[:, :4], np.sin(args), rtol=1e-5, atol=1e-5)
  shifted = layers.timestep_embedding(t, 8, downscale_freq_shift=1.0)
  np.testing.assert_allclose(shifted[:, :4], np.cos(t[:, None] * np.exp(-math.log(10000.0) * np.arange(4) / 3)),
                             rtol=1e-5, atol=1e-5)
  assert layers.timestep_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_resnet_block_uses_the_time_embedding(scale_shift, random_params):
  block = layers.ResnetBlock(16, use_scale_shift_norm=scale_shift, groups=4)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  temb = jax.random.normal(jax.random.key(1), (2, 32))
  params = random_params(block, x, temb)
  p = params["params"]
  assert p["time_emb_proj"]["kernel"].shape == (32, 32 if scale_shift else 16)
  assert p["conv_shortcut"]["kernel"].shape == (1, 1, 8, 16)  # channel change -> 1x1 shortcut
  out = block.apply(params, x, temb)
  assert out.shape == (2, 4, 4, 16)
  assert not np.allclose(out, block.apply(params, x, temb * 2))


def test_down_and_upsample_shapes(random_params):
  x = jnp.zeros((1, 8, 8, 4))
  for asymmetric in (False, True):
    down = layers.Downsample(6, asymmetric_padding=asymmetric)
    assert down.apply(random_params(down, x), x).shape == (1, 4, 4, 6)
  up = layers.Upsample(3)
  assert up.apply(random_params(up, x), x).shape == (1, 16, 16, 3)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 1, 1, 3)])
def test_upsample_equals_nearest_upsampling_then_conv_with_gradients(shape, random_params):
  """Upsample's phase-wise 2x2 convolutions against the plain form (repeat, then the 3x3 conv with the same
  parameters), values and gradients in x, kernel and bias, fresh random inputs."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  upstream = jnp.asarray(rng.normal(size=(shape[0], 2 * shape[1], 2 * shape[2], 4)), jnp.float32)
  up = layers.Upsample(4)
  params = random_params(up, x)
  plain = lambda p, x: layers.conv(4, name="conv", dtype=jnp.float32).apply(
      {"params": p["params"]["conv"]}, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
  grads = lambda fn: jax.grad(lambda p, x: jnp.sum(fn(p, x) * upstream), argnums=(0, 1))(params, x)
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(up.apply(params, x), plain(params, x)) < 1e-6
  for ours, ref in zip(jax.tree.leaves(grads(up.apply)), jax.tree.leaves(grads(plain))):
    assert rel(ours, ref) < 1e-6


@pytest.mark.parametrize("linear", [False, True])
def test_spatial_transformer_cross_attends(linear, random_params):
  block = layers.SpatialTransformer(num_heads=2, head_dim=4, depth=2, use_linear_projection=linear, groups=4)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  context = jax.random.normal(jax.random.key(1), (2, 3, 10))
  params = random_params(block, x, context)
  apply = jax.jit(block.apply)
  out = apply(params, x, context)
  assert out.shape == x.shape
  assert not np.allclose(out, apply(params, x, context + 1.0))  # the context matters
  p = params["params"]
  assert p["transformer_blocks_1"]["attn2"]["to_k"]["kernel"].shape == (10, 8)
  assert p["proj_in"]["kernel"].shape == ((8, 8) if linear else (1, 1, 8, 8))


def test_every_parameter_has_logical_axis_names(assert_fully_annotated):
  x = jnp.zeros((1, 2, 2, 8))
  for block, args in [(layers.SpatialTransformer(num_heads=2, head_dim=4, use_linear_projection=True, groups=4),
                       (x, jnp.zeros((1, 3, 5)))),
                      (layers.ResnetBlock(16, use_scale_shift_norm=True, groups=4), (x, jnp.zeros((1, 32)))),
                      (layers.AttentionBlock(2, 4, groups=4), (x,))]:
    assert_fully_annotated(jax.eval_shape(block.init, jax.random.key(0), *args))


def test_attention_block_splits_channels_into_heads(random_params):
  """The same weights give different outputs with 2 heads of 8 and 4 heads of 4 channels."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 16))
  two = layers.AttentionBlock(num_heads=2, head_dim=8, groups=4)
  four = layers.AttentionBlock(num_heads=4, head_dim=4, groups=4)
  params = random_params(two, x)
  abstract_four = nn.unbox(jax.eval_shape(four.init, jax.random.key(1), x))
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, abstract_four)
  out_two, out_four = two.apply(params, x), four.apply(params, x)
  assert out_two.shape == x.shape
  assert not np.allclose(out_two, out_four, atol=1e-4)



@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 64), 32), ((2, 4, 4, 32), 32), ((3, 7, 12), 4)])
def test_group_norm_matches_torch_and_flax_with_gradients(shape, groups):
  """Values and input / scale / bias gradients against torch.nn.GroupNorm (channels first) and flax's GroupNorm,
  fresh random inputs with a non-zero mean (the E[x^2] - E[x]^2 variance is the weak spot)."""
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(2)
  x = rng.normal(size=shape).astype(np.float32) * 3 + 1.5
  scale, bias = (rng.normal(size=shape[-1]).astype(np.float32) for _ in range(2))
  upstream = rng.normal(size=shape).astype(np.float32)
  params = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}

  def ours_and_grads(module):
    loss = lambda p, x: jnp.sum(module.apply(p, x) * upstream)
    return module.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))

  out, (d_params, d_x) = ours_and_grads(layers.group_norm(groups, 1e-5, name="norm", dtype=jnp.float32))
  flax_out, (flax_d_params, flax_d_x) = ours_and_grads(nn.GroupNorm(num_groups=groups, epsilon=1e-5))
  reference = torch.nn.GroupNorm(groups, shape[-1], eps=1e-5)
  with torch.no_grad():
    reference.weight.copy_(torch.from_numpy(scale))
    reference.bias.copy_(torch.from_numpy(bias))
  x_t = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_()
  torch_out = reference(x_t)
  (torch_out * torch.from_numpy(np.moveaxis(upstream, -1, 1).copy())).sum().backward()
  channels_last = lambda t: np.moveaxis(t.detach().numpy(), 1, -1)
  rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))
  for ours, torch_value, flax_value in [(out, channels_last(torch_out), flax_out),
                                         (d_x, channels_last(x_t.grad), flax_d_x),
                                         (d_params["params"]["scale"], reference.weight.grad.numpy(),
                                          flax_d_params["params"]["scale"]),
                                         (d_params["params"]["bias"], reference.bias.grad.numpy(),
                                          flax_d_params["params"]["bias"])]:
    assert rel(ours, torch_value) < 1e-5 and rel(ours, flax_value) < 1e-5


def test_group_norm_refuses_channels_that_do_not_split_into_groups():
  with pytest.raises(ValueError, match="'norm1': 48 channels do not split into 32 groups"):
    layers.group_norm(32, 1e-5, name="norm1", dtype=jnp.float32).init(jax.random.key(0), jnp.zeros((1, 2, 2, 48)))
