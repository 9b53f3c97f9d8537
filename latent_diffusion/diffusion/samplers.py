"""Samplers as one lax.scan over steps: DDIM (any eta) and ancestral DDPM, with classifier-free guidance.

A sampler takes `model_fn(x_t, t, cond) -> model_output` (x_t [B, ...]; t int32 [B]; cond a pytree
of arrays with leading axis B, or None), a NoiseSchedule and x_T [B, ...], and returns x_0 [B, ...].
Everything is jit-able; `num_steps` and the string options must be static. The noise of step i is
drawn from fold_in(rng, i). No model code here.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.diffusion.schedule import NoiseSchedule, predict_x0_and_eps

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
GuidedFn = Callable[[jax.Array, jax.Array, Any, Any], jax.Array]


def _leading(num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
  return np.arange(num_steps) * (num_train_timesteps // num_steps) + steps_offset


def _trailing(num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
  del steps_offset  # diffusers applies it to 'leading' only
  return np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps))[::-1] - 1


def _linspace(num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
  del steps_offset
  return np.linspace(0, num_train_timesteps - 1, num_steps).round()


# Spacing name -> fn(T, num_steps, steps_offset) -> ascending timesteps [num_steps]
# (the `timestep_spacing` options of diffusers' DDIMScheduler; Lin et al. 2024 for 'trailing').
SPACINGS = {"leading": _leading, "trailing": _trailing, "linspace": _linspace}


def sampling_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading",
                       steps_offset: int = 0) -> np.ndarray:
  """The `num_steps` timesteps a sampler visits, descending, int64 [num_steps]."""
  if spacing not in SPACINGS:
    raise ValueError(f"Unknown timestep spacing {spacing!r}; known: {sorted(SPACINGS)}.")
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_timesteps}].")
  timesteps = SPACINGS[spacing](num_train_timesteps, num_steps, steps_offset).astype(np.int64)[::-1].copy()
  if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
    raise ValueError(f"steps_offset={steps_offset} moves timesteps {timesteps} outside [0, {num_train_timesteps}).")
  return timesteps


def guided(model_fn: ModelFn, guidance_scale: float | jax.Array) -> GuidedFn:
  """Classifier-free guidance (Ho & Salimans 2022) as fn(x_t, t, cond, uncond) -> output [B, ...].

  out = out_uncond + s * (out_cond - out_uncond), from ONE model call on the batch [cond; uncond]
  of size 2B. With uncond None or a Python scale of exactly 1, a plain call model_fn(x_t, t, cond).
  A traced scale always takes the guided path (so changing it does not recompile).
  """
  plain = isinstance(guidance_scale, (int, float)) and guidance_scale == 1

  def fn(x_t, t, cond, uncond):
    if uncond is None or plain:
      return model_fn(x_t, t, cond)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
    out = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)    # [2B, ...]
    out_cond, out_uncond = jnp.split(out, 2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)

  return fn


def _x0_and_eps(model: GuidedFn, schedule: NoiseSchedule, x_t, t, cond, uncond, prediction_type, clip_x0):
  """(x0_hat, eps_hat) [B, ...] at scalar timestep t, x0_hat optionally clipped to [-clip_x0, clip_x0]."""
  t_batch = jnp.full(x_t.shape[:1], t, jnp.int32)                                  # [B]
  x0_hat, eps_hat = predict_x0_and_eps(schedule, x_t, t_batch, model(x_t, t_batch, cond, uncond), prediction_type)
  if clip_x0 is not None:
    x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
  return x0_hat, eps_hat


def _alpha_bar_prev(schedule: NoiseSchedule, t_prev: jax.Array, final_alpha_bar) -> jax.Array:
  """alpha_bar at the next (less noisy) timestep; t_prev < 0 marks the end of the chain."""
  return jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], final_alpha_bar)


def _scan(step_fn, x_T: jax.Array, timesteps: np.ndarray) -> jax.Array:
  """x_0 after step_fn(x_t, (i, t, t_prev)) over descending timesteps; t_prev = -1 after the last."""
  t_prev = np.append(timesteps[1:], -1)
  xs = (jnp.arange(len(timesteps)), jnp.asarray(timesteps, jnp.int32), jnp.asarray(t_prev, jnp.int32))
  x_0, _ = jax.lax.scan(lambda x_t, s: (step_fn(x_t, *s), None), x_T, xs)
  return x_0


def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *, num_steps: int,
                eta: float = 0.0, cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
                prediction_type: str = "epsilon", spacing: str = "leading", steps_offset: int = 0,
                set_alpha_to_one: bool = True, clip_x0: float | None = None) -> jax.Array:
  """DDIM (Song et al. 2021), x_T [B, ...] -> x_0 [B, ...] in `num_steps` steps t -> t':

    x_t' = sqrt(a') x0_hat + sqrt(1 - a' - sigma_t^2) eps_hat + sigma_t z,
    sigma_t = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a'),   a = alpha_bar_t, a' = alpha_bar_t'.

  eta = 0 follows the probability-flow ODE deterministically; eta = 1 with all T steps is DDPM's
  ancestral sampler. After the last step a' = 1 if `set_alpha_to_one` else alpha_bar_0 (diffusers).
  eps_hat is the model's, also when x0_hat is clipped (diffusers' use_clipped_model_output=False).
  """
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
  final_alpha_bar = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
  model = guided(model_fn, guidance_scale)

  def step(x_t, i, t, t_prev):
    x0_hat, eps_hat = _x0_and_eps(model, schedule, x_t, t, cond, uncond, prediction_type, clip_x0)
    a, a_prev = schedule.alphas_cumprod[t], _alpha_bar_prev(schedule, t_prev, final_alpha_bar)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    # max(., 0): float32 rounding can push 1 - a' - sigma^2 just below 0 when eta = 1.
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps_hat
    z = jax.random.normal(jax.random.fold_in(rng, i), x_t.shape, x_t.dtype)
    return (jnp.sqrt(a_prev) * x0_hat + direction + sigma * z).astype(x_t.dtype)

  return _scan(step, x_T, timesteps)


def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                clip_x0: float | None = None, num_steps: int | None = None) -> jax.Array:
  """Ancestral DDPM (Ho et al. 2020), x_T [B, ...] -> x_0 [B, ...], over all T steps (or `num_steps`
  'leading'-spaced ones, with beta_t the beta of the strided step t -> t'):

    x_t' ~ N(mu_t, beta_tilde_t),  mu_t = (sqrt(a') beta_t x0_hat + sqrt(1 - beta_t) (1 - a') x_t) / (1 - a),
    beta_tilde_t = (1 - a') / (1 - a) * beta_t,  beta_t = 1 - a / a',  a' = 1 after t = 0 (no noise).
  """
  num_steps = schedule.num_timesteps if num_steps is None else num_steps
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, "leading")
  model = guided(model_fn, guidance_scale)

  def step(x_t, i, t, t_prev):
    x0_hat, _ = _x0_and_eps(model, schedule, x_t, t, cond, uncond, prediction_type, clip_x0)
    a, a_prev = schedule.alphas_cumprod[t], _alpha_bar_prev(schedule, t_prev, 1.0)
    beta = 1.0 - a / a_prev
    mean = (jnp.sqrt(a_prev) * beta * x0_hat + jnp.sqrt(1.0 - beta) * (1.0 - a_prev) * x_t) / (1.0 - a)
    beta_tilde = (1.0 - a_prev) / (1.0 - a) * beta                 # exactly 0 after t = 0
    z = jax.random.normal(jax.random.fold_in(rng, i), x_t.shape, x_t.dtype)
    return (mean + jnp.sqrt(beta_tilde) * z).astype(x_t.dtype)

  return _scan(step, x_T, timesteps)


# Sampler name -> function (config.sample.sampler).
SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample}
