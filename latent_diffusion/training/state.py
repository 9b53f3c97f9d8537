"""Train state: parameters, their EMA and the optimizer state, created directly sharded."""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from latent_diffusion import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 [], optimizer steps taken
  params: Any
  ema_params: Any          # exponential moving average of params (what sampling uses)
  opt_state: Any


def learning_rate_schedule(optim_config, train_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then constant or cosine decay to `lr * final_lr_fraction`."""
  warmup = optax.linear_schedule(0.0, optim_config.lr, max(optim_config.warmup_steps, 1))
  if optim_config.schedule == "constant":
    after = optax.constant_schedule(optim_config.lr)
  elif optim_config.schedule == "cosine":
    after = optax.cosine_decay_schedule(
        optim_config.lr, max(train_steps - optim_config.warmup_steps, 1), alpha=optim_config.final_lr_fraction)
  else:
    raise ValueError(f"Unknown optim.schedule {optim_config.schedule!r}; expected 'constant' or 'cosine'.")
  return optax.join_schedules([warmup, after], [optim_config.warmup_steps])


def make_optimizer(optim_config, train_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup and (optional) global-norm gradient clipping."""
  adamw = optax.adamw(learning_rate_schedule(optim_config, train_steps), b1=optim_config.b1,
                      b2=optim_config.b2, weight_decay=optim_config.weight_decay)
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adamw)
  return adamw


def ema_update(ema_params, params, step: jax.Array, decay: float):
  """EMA with the usual warmup min(decay, (1 + step) / (10 + step)) so short runs are not stuck at init."""
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, ema_decay: float) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema_update(state.ema_params, params, state.step, ema_decay))


def create_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       rng: jax.Array, mesh, mesh_config) -> tuple[TrainState, Any]:
  """Initialises the state under jit with sharded outputs; returns (state, state_shardings).

  `init_params(rng)` returns the boxed (logically partitioned) params of `model.init`.
  No host ever holds the unsharded state.
  """
  def init_boxed(rng):
    params = init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params))

  shardings = parallel.state_shardings(init_boxed, mesh, mesh_config, rng)
  state = jax.jit(lambda r: nn.unbox(init_boxed(r)), out_shardings=shardings)(rng)
  return state, shardings
