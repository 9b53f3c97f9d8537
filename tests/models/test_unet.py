"""UNet: shapes, every conditioning path (timestep, class, cross-attention context, concat), heads, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion.models import UNet

B, H, W, C = 2, 8, 8, 4


def make(**kwargs):
  defaults = dict(out_channels=C, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(2,), num_head_channels=8, groups=4)
  return UNet(**{**defaults, **kwargs})


def inputs(seed=0):
  x = jax.random.normal(jax.random.key(seed), (B, H, W, C))
  return x, jnp.array([3, 700])


@pytest.fixture(scope="module")
def full_model(random_params):
  """Class labels + cross-attention + concat channels, scale-shift norm, dropout; one compiled forward."""
  model = make(context_dim=12, num_classes=11, use_scale_shift_norm=True, dropout=0.5, transformer_depth=1)
  x, t = inputs()
  kwargs = dict(context=jnp.ones((B, 5, 12)), y=jnp.array([1, 2]), concat=jnp.ones((B, H, W, 2)))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, **kwargs))
  # Random (not zero-initialised) output conv, so that conditioning effects are visible.
  params = random_params(model, x, t, **kwargs)
  forward = jax.jit(lambda p, x, t, kw: model.apply(p, x, t, **kw))
  return model, variables, params, kwargs, forward


def test_output_shape_and_annotations(full_model, assert_fully_annotated):
  _, variables, params, kwargs, forward = full_model
  x, t = inputs()
  assert_fully_annotated(variables)
  assert forward(params, x, t, kwargs).shape == (B, H, W, C)
  p = nn.unbox(variables)["params"]
  assert p["conv_in"]["kernel"].shape == (3, 3, C + 2, 16)  # concat channels
  assert p["label_emb"]["embedding"].shape == (11, 64)
  assert p["down_0_res_0"]["time_emb_proj"]["kernel"].shape == (64, 32)  # scale and shift
  assert p["down_1_attn_0"]["transformer_blocks_0"]["attn2"]["to_k"]["kernel"].shape == (12, 32)


@pytest.mark.parametrize("change", ["t", "y", "context", "concat", "x"])
def test_every_conditioning_path_changes_the_output(full_model, change):
  _, _, params, kwargs, forward = full_model
  x, t = inputs()
  base = forward(params, x, t, kwargs)
  changed = dict(kwargs)
  if change == "t":
    t = t + 100
  elif change == "x":
    x = x * 1.5
  elif change == "y":
    changed["y"] = jnp.array([10, 10])
  else:
    changed[change] = kwargs[change] * -1.0 + 0.5
  out = forward(params, x, t, changed)
  assert float(jnp.abs(out - base).mean()) > 1e-3 * float(jnp.abs(base).mean())
  # Each example only sees its own conditioning: changing example 1 alone leaves example 0 alone.
  if change != "t":
    mixed = jax.tree.map(lambda a, b: a.at[1].set(b[1]), kwargs, changed)
    out_mixed = forward(params, x.at[0].set(inputs()[0][0]), t, mixed)
    np.testing.assert_allclose(out_mixed[0], base[0], rtol=1e-5, atol=1e-5)


def test_dropout_uses_the_dropout_rng(full_model):
  model, _, params, kwargs, forward = full_model
  x, t = inputs()
  train = jax.jit(lambda rng: model.apply(params, x, t, **kwargs, deterministic=False, rngs={"dropout": rng}))
  np.testing.assert_array_equal(train(jax.random.key(0)), train(jax.random.key(0)))
  assert not np.allclose(train(jax.random.key(0)), train(jax.random.key(1)))
  assert not np.allclose(train(jax.random.key(0)), forward(params, x, t, kwargs))


def test_heads_by_count_and_by_channels():
  x, t = inputs()
  shapes = lambda model: nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t))["params"]
  by_count = shapes(make(num_head_channels=-1, num_heads=4, attention_resolutions=(1, 2)))
  by_channels = shapes(make(num_head_channels=4, attention_resolutions=(1, 2)))
  # q/k/v map C -> heads * head_dim = C, so levels 0 (16 channels) and 1 (32 channels) differ only in width.
  for params in (by_count, by_channels):
    for name, width in [("down_0_attn_0", 16), ("down_1_attn_0", 32), ("mid_attn", 32), ("up_0_attn_1", 16)]:
      for proj in ("to_q", "to_k", "to_v"):
        assert params[name]["attention"][proj]["kernel"].shape == (width, width)
        assert params[name]["attention"][proj]["bias"].shape == (width,)
  assert make(num_head_channels=-1, num_heads=4)._heads(32) == (4, 8)
  assert make(num_head_channels=-1, num_heads=4)._heads(16) == (4, 4)
  assert make(num_head_channels=4)._heads(32) == (8, 4)
  assert make(num_head_channels=4)._heads(16) == (4, 4)


def test_unconditional_model_with_mid_attention_only(random_params):
  x, t = inputs()
  model = make(attention_resolutions=())
  variables = random_params(model, x, t)
  assert [k for k in variables["params"] if "attn" in k] == ["mid_attn"]
  assert jax.jit(model.apply)(variables, x, jnp.float32(0.5)).shape == (B, H, W, C)  # scalar float t broadcasts


def test_bfloat16_compute_keeps_float32_params():
  x, t = inputs()
  model = make(context_dim=6, dtype=jnp.bfloat16)
  context = jnp.zeros((B, 3, 6))
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, context=context)
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype(jnp.float32)}
  assert jax.eval_shape(lambda v: model.apply(v, x, t, context=context), variables).dtype == jnp.bfloat16


def test_rematerialisation_keeps_params_outputs_and_gradients(random_params):
  """Remat changes what the backward pass stores, never the function or the parameter tree."""
  x, t = inputs()
  context = jax.random.normal(jax.random.key(3), (B, 3, 6))
  plain, remat = make(context_dim=6), make(context_dim=6, remat_policy="full")
  variables = random_params(plain, x, t, context=context)
  assert jax.tree.structure(variables) == jax.tree.structure(random_params(remat, x, t, context=context))

  def grads(model):
    loss = lambda v: jnp.sum(jnp.square(model.apply(v, x, t, context=context)))
    return jax.jit(jax.value_and_grad(loss))(variables)

  (loss_plain, g_plain), (loss_remat, g_remat) = grads(plain), grads(remat)
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):   # recomputation fuses differently
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7


@pytest.mark.parametrize("kwargs, call, message", [
    (dict(remat_policy="some"), {}, "Unknown remat_policy 'some'"),
    (dict(num_heads=2), {}, "Set exactly one of num_heads"),
    (dict(num_head_channels=-1), {}, "Set exactly one of num_heads"),
    (dict(num_head_channels=5), {}, "num_head_channels=5 does not divide 32"),
    (dict(num_head_channels=-1, num_heads=3), {}, "num_heads=3 does not divide 32"),
    ({}, dict(context=jnp.ones((B, 3, 4))), "without cross-attention"),
    (dict(context_dim=4), dict(context=jnp.ones((B, 3, 6))), "Context width 6 != context_dim 4"),
    (dict(num_classes=3), {}, "Class labels y must be given"),
    ({}, dict(y=jnp.array([0, 1])), "Class labels y must be given"),
    (dict(channel_mult=(1, 2, 2, 2)), {}, "not divisible by 2\\*\\*\\(len\\(channel_mult\\)-1\\) = 8"),
    (dict(num_head_channels=-1, num_heads=(2, 2, 2)), {}, "num_heads=\\(2, 2, 2\\) needs one entry per level"),
    (dict(in_channels=6), {}, "Input has 4 channels \\(x plus concat\\), the UNet was built for in_channels=6"),
    (dict(context_dim=4, mid_attention_norm=False), {}, "mid_attention_norm=False applies to self-attention only"),
    (dict(downsample_padding=2), {}, "downsample_padding=2; expected 1"),
])
def test_bad_configurations_fail_clearly(kwargs, call, message):
  x, t = inputs()
  if "channel_mult" in kwargs:
    x = jnp.zeros((B, 12, 12, C))
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: make(**kwargs).init(jax.random.key(0), x, t, **call))
