"""Optimizer schedule, EMA and sharded state creation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import base
from latent_diffusion import parallel
from latent_diffusion.training.state import (TrainState, apply_gradients, create_train_state, ema_update,
                                             learning_rate_schedule, make_optimizer)


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
    parallel.make_mesh(ConfigDict(dict(shape=(-1, -1, 1), axes=("data", "fsdp", "tensor"))))
  with pytest.raises(ValueError, match="needs 4 devices"):
    parallel.make_mesh(ConfigDict(dict(shape=(2, 2, 1), axes=("data", "fsdp", "tensor"))))
