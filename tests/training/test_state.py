"""Optimizer schedule, EMA and sharded state creation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from latent_diffusion import parallel
from latent_diffusion.configs import base
from latent_diffusion.training.state import (TrainState, accumulated_gradients, apply_gradients, create_train_state,
                                             ema_update, learning_rate_schedule, make_optimizer)


def test_warmup_then_cosine_schedule():
  optim = base.optimizer(lr=1e-3, warmup_steps=10)
  schedule = learning_rate_schedule(optim, train_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(110)) == pytest.approx(1e-4)  # final_lr_fraction 0.1
  assert float(schedule(60)) == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-5)  # cosine midpoint


def test_unknown_schedule_is_rejected():
  optim = base.optimizer(lr=1e-3, warmup_steps=10)
  optim.schedule = "triangle"
  with pytest.raises(ValueError, match="Unknown optim.schedule 'triangle'"):
    learning_rate_schedule(optim, 100)


def test_ema_update_with_warmup():
  ema, params = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
  # step 0: rate = min(0.999, 1/10) = 0.1 -> ema moves 90% towards params.
  np.testing.assert_allclose(ema_update(ema, params, jnp.int32(0), 0.999)["w"], 0.9, rtol=1e-6)
  # late steps: rate = decay.
  np.testing.assert_allclose(ema_update(ema, params, jnp.int32(10**6), 0.99)["w"], 0.01, rtol=1e-4)


def test_gradient_clipping_and_adamw_step():
  optim = base.optimizer(lr=0.1, warmup_steps=0)
  optim.schedule = "constant"
  optim.grad_clip = 1.0
  tx = make_optimizer(optim, 10)
  params = {"w": jnp.zeros(4)}
  state = TrainState(step=jnp.int32(0), params=params, ema_params=params, opt_state=tx.init(params))
  state = apply_gradients(state, {"w": jnp.full(4, 100.0)}, tx, ema_decay=0.9)
  # Adam's first step moves every coordinate by lr regardless of the (clipped) gradient size.
  np.testing.assert_allclose(state.params["w"], -0.1, rtol=1e-4)
  assert int(state.step) == 1


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")), (4, 8))
    return x @ kernel


def test_state_is_created_with_shardings_from_logical_names():
  mesh_config = base.get_config().mesh
  mesh = parallel.make_mesh(mesh_config)
  tx = optax.adam(1e-3)
  init = lambda r: _Tiny().init(r, jnp.zeros((1, 4)))["params"]
  state, shardings = create_train_state(init, tx, jax.random.key(0), mesh, mesh_config)
  assert state.params["kernel"].shape == (4, 8)
  # 'mlp' -> fsdp by the default rules; the optimizer moments follow the parameter.
  assert shardings.params["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert shardings.opt_state[0].mu["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert state.params["kernel"].sharding == shardings.params["kernel"]


def test_mesh_shape_errors():
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    parallel.make_mesh(ConfigDict(dict(shape=(-1, -1, 1), dcn_shape=(1, 1, 1), axes=("data", "fsdp", "tensor"))))
  with pytest.raises(ValueError, match="needs 4 devices"):
    parallel.make_mesh(ConfigDict(dict(shape=(2, 2, 1), dcn_shape=(1, 1, 1), axes=("data", "fsdp", "tensor"))))
  with pytest.raises(ValueError, match=r"dcn_shape=\(2, 1\) must have one entry >= 1 per axis"):
    parallel.make_mesh(ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(2, 1), axes=("data", "fsdp", "tensor"))))
  with pytest.raises(ValueError, match=r"dcn_shape=\(2, 1, 1\) does not divide the 1 devices"):
    parallel.make_mesh(ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(2, 1, 1), axes=("data", "fsdp", "tensor"))),
                       jax.devices()[:1])


def _regression_loss(params, batch, rng):
  """A mean-over-examples loss that ignores rng: accumulation must reproduce it exactly."""
  del rng
  pred = jnp.tanh(batch["x"] @ params["w"]) + params["b"]
  loss = jnp.mean(jnp.square(pred - batch["y"]))
  return loss, {"loss": loss}


@pytest.mark.parametrize("microbatches", [2, 4])
def test_accumulated_gradients_equal_the_whole_batch(microbatches):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
  batch = {"x": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), "y": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}
  whole, whole_metrics = jax.grad(_regression_loss, has_aux=True)(params, batch, None)
  grads, metrics = jax.jit(lambda p, b: accumulated_gradients(_regression_loss, p, b, jax.random.key(0),
                                                              microbatches))(params, batch)
  for name in params:
    np.testing.assert_allclose(grads[name], whole[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], whole_metrics["loss"], rtol=1e-6)


def test_microbatches_must_divide_the_batch():
  batch = {"x": jnp.zeros((6, 5)), "y": jnp.zeros((6, 3))}
  with pytest.raises(ValueError, match="Batch of 6 does not split into 4 microbatches"):
    accumulated_gradients(_regression_loss, {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}, batch, jax.random.key(0), 4)
