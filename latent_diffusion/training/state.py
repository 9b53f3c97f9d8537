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
  """Linear warmup from 0 to `lr`, then constant or cosine decay to `lr * final_lr_fraction` at `train_steps`."""
  lr, warmup_steps = optim_config.lr, optim_config.warmup_steps
  if optim_config.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
                                [warmup_steps])
  if optim_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(train_steps, warmup_steps + 1),
                                              end_value=lr * optim_config.final_lr_fraction)
  raise ValueError(f"Unknown optim.schedule {optim_config.schedule!r}; expected 'constant' or 'cosine'.")


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


# fn(params, batch, rng) -> (scalar loss, {name: scalar metric}); all randomness drawn from rng.
LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def _microbatches(batch: dict, count: int) -> dict:
  """[B, ...] -> [count, B / count, ...], microbatch i = examples i, i + count, ... so that every
  microbatch keeps the batch's sharding over the data axes (each device's rows split evenly)."""
  def split(x):
    if x.shape[0] % count:
      raise ValueError(f"Batch of {x.shape[0]} does not split into {count} microbatches (optim.microbatches).")
    return jnp.moveaxis(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 1, 0)
  return jax.tree.map(split, batch)


def mean_over_microbatches(fn: Callable[[dict, jax.Array | int], Any], batch: dict, microbatches: int = 1):
  """The mean of fn(slice_i, i) over `microbatches` slices of the batch (any pytree of arrays).

  One lax.scan inside the jitted step: for outputs that are means over examples (losses, gradients) the same
  result as fn(batch, 0) with the activation memory of one slice.
  """
  if microbatches == 1:
    return fn(batch, 0)
  slices = _microbatches(batch, microbatches)

  def accumulate(total, xs):
    i, micro = xs
    return jax.tree.map(jnp.add, total, fn(micro, i)), None

  first = jax.tree.map(lambda x: x[0], slices)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first, jnp.int32(0)))
  total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(microbatches), slices))
  return jax.tree.map(lambda x: x / microbatches, total)


def microbatch_rng(rng: jax.Array, index: jax.Array | int, microbatches: int) -> jax.Array:
  """The key of microbatch `index`: rng itself without accumulation, else fold_in(rng, index)."""
  return rng if microbatches == 1 else jax.random.fold_in(rng, index)


def accumulated_gradients(loss_fn: LossFn, params, batch: dict, rng: jax.Array, microbatches: int = 1):
  """(grads, metrics) of loss_fn averaged over `microbatches` slices of the batch (mean_over_microbatches);
  microbatch i uses fold_in(rng, i)."""
  grad_fn = jax.grad(loss_fn, has_aux=True)
  return mean_over_microbatches(lambda micro, i: grad_fn(params, micro, microbatch_rng(rng, i, microbatches)),
                                batch, microbatches)


# Metric a guarded step reports: 1.0 if its update was skipped as non-finite, else 0.0.
NONFINITE_METRIC = "nonfinite_step"


def finite_update(metrics: dict, grads) -> jax.Array:
  """bool []: every metric (the loss among them) and the global gradient norm are finite."""
  values = [jnp.isfinite(optax.global_norm(grads))] + [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]
  return jnp.stack(values).all()


def keep_if_not_finite(finite: jax.Array, updated, previous):
  """`updated` if `finite` else `previous`, leaf by leaf, except that the step counter advances either
  way (the batch was consumed): a non-finite step leaves parameters, EMA and optimizer state as they were.
  One select per leaf inside the jitted step (XLA fuses it into the update): no host sync."""
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, previous)
  return kept.replace(step=updated.step)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, ema_decay: float, microbatches: int = 1):
  """step(state, batch, rng) -> (state, metrics): gradients (accumulated over microbatches), AdamW, EMA.

  The step's key is fold_in(rng, state.step). Guarded: if the loss, another metric or the gradient
  norm is not finite, the update is skipped (see keep_if_not_finite) and metrics[NONFINITE_METRIC] = 1;
  the loop counts such steps and stops after loop.max_consecutive_nonfinite_steps of them in a row.
  """
  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    grads, metrics = accumulated_gradients(loss_fn, state.params, batch, jax.random.fold_in(rng, state.step),
                                           microbatches)
    finite = finite_update(metrics, grads)
    state = keep_if_not_finite(finite, apply_gradients(state, grads, tx, ema_decay), state)
    return state, {**metrics, "grad_norm": optax.global_norm(grads), NONFINITE_METRIC: 1.0 - finite.astype(jnp.float32)}
  return train_step


def _replace(boxed: dict, values: dict, path: str = "") -> dict:
  """`boxed` params with the leaves at the paths of `values` (a nested dict of arrays) set to those values."""
  out = dict(boxed)
  for key, value in values.items():
    if key not in boxed:
      raise KeyError(f"Initial value for {path}/{key}, which the model does not have.")
    if isinstance(value, dict):
      out[key] = _replace(boxed[key], value, f"{path}/{key}")
    else:
      box = boxed[key]
      boxed_leaf = isinstance(box, nn.Partitioned)
      shape = (box.value if boxed_leaf else box).shape
      if tuple(shape) != tuple(value.shape):
        raise ValueError(f"Initial value for {path}/{key} has shape {tuple(value.shape)}, the model {tuple(shape)}.")
      out[key] = box.replace_boxed(value) if boxed_leaf else value
  return out


def _like(tree: Any, values: Any) -> Any:
  """The part of `tree` at the paths of the nested dict `values`."""
  return {k: _like(tree[k], v) for k, v in values.items()} if isinstance(values, dict) else tree


def _boxed_state_fn(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation):
  """(rng, values) -> the boxed TrainState of fresh params (`values` replaced at their paths)."""
  def init_boxed(rng, values):
    params = _replace(init_params(rng), values)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params))
  return init_boxed


def create_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       rng: jax.Array, mesh, mesh_config, values: dict | None = None) -> tuple[TrainState, Any]:
  """Initialises the state under jit with sharded outputs; returns (state, state_shardings).

  `init_params(rng)` returns the boxed (logically partitioned) params of `model.init`. `values`, a
  nested dict of arrays such as imported weights, replaces the initial params at its paths (moved to
  their shardings first; XLA drops the random initialisers it overrides). No host ever holds the
  unsharded state.
  """
  values = {} if values is None else values
  init_boxed = _boxed_state_fn(init_params, tx)
  shardings = parallel.state_shardings(init_boxed, mesh, mesh_config, rng, values)
  values = jax.device_put(values, _like(shardings.params, values))
  state = jax.jit(lambda r, v: nn.unbox(init_boxed(r, v)), out_shardings=shardings)(rng, values)
  return state, shardings


def abstract_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, mesh,
                         mesh_config) -> tuple[TrainState, Any]:
  """(state of jax.ShapeDtypeStructs carrying their shardings, state_shardings): create_train_state's layout
  without any array, for ahead-of-time compiles (e.g. for a TPU topology on a CPU host)."""
  init_boxed = _boxed_state_fn(init_params, tx)
  rng = jax.random.key(0)
  shardings = parallel.state_shardings(init_boxed, mesh, mesh_config, rng, {})
  shapes = jax.eval_shape(lambda r: nn.unbox(init_boxed(r, {})), rng)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return state, shardings
