"""Samplers as one jitted lax.scan over steps: DDIM (any eta) and DDPM, with classifier-free guidance.

A sampler takes `model_fn(x_t, t, cond) -> model_output` (t int32 [B]; cond a pytree with a
leading batch axis, or None), the NoiseSchedule and x_T, and returns x_0. No model code here.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.diffusion.schedule import NoiseSchedule, predict_x0_and_eps

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
SPACINGS = ("leading", "trailing", "linspace")


def sampling_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading",
                       steps_offset: int = 0) -> np.ndarray:
  """The `num_steps` timesteps visited, descending, int64 (diffusers' DDIMScheduler conventions)."""
  if not 0 < num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_timesteps}].")
  if spacing == "leading":
    steps = np.arange(num_steps) * (num_train_timesteps // num_steps) + steps_offset
  elif spacing == "trailing":
    steps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)).astype(np.int64)[::-1] - 1
  elif spacing == "linspace":
    steps = np.linspace(0, num_train_timesteps - 1, num_steps).round()
  else:
    raise ValueError(f"Unknown timestep spacing {spacing!r}; expected one of {SPACINGS}.")
  return steps.astype(np.int64)[::-1].copy()


def guided(model_fn: ModelFn, guidance_scale: float) -> Callable[[jax.Array, jax.Array, Any, Any], jax.Array]:
  """Classifier-free guidance: out = out_uncond + s * (out_cond - out_uncond).

  One model call on the concatenated batch [cond; uncond]; with s == 1 or no uncond, a plain call.
  """
  def fn(x_t, t, cond, uncond):
    if uncond is None or guidance_scale == 1.0:
      return model_fn(x_t, t, cond)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
    out = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
    out_cond, out_uncond = jnp.split(out, 2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)
  return fn


def _maybe_clip(x0_hat: jax.Array, clip_x0: float | None) -> jax.Array:
  return x0_hat if clip_x0 is None else jnp.clip(x0_hat, -clip_x0, clip_x0)


def _scan_steps(step_fn, x_T: jax.Array, timesteps: np.ndarray, prev_timesteps: np.ndarray) -> jax.Array:
  """Runs step_fn(x, (index, t, t_prev)) over the steps in one lax.scan; returns the last x."""
  xs = (jnp.arange(len(timesteps)), jnp.asarray(timesteps, jnp.int32), jnp.asarray(prev_timesteps, jnp.int32))
  x_0, _ = jax.lax.scan(lambda x, s: (step_fn(x, s), None), x_T, xs)
  return x_0


def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *, num_steps: int,
                eta: float = 0.0, cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
                prediction_type: str = "epsilon", spacing: str = "leading", steps_offset: int = 0,
                set_alpha_to_one: bool = True, clip_x0: float | None = None) -> jax.Array:
  """DDIM (Song et al. 2021): x_{t'} = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z.

  sigma_t = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a'); eta = 0 is the deterministic ODE
  sampler, eta = 1 with all T steps is DDPM's ancestral sampler. x_T [B, ...] -> x_0 [B, ...].
  """
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
  # As diffusers: the previous timestep is t - T // num_steps for every spacing (< 0: final alpha).
  prev_timesteps = timesteps - schedule.num_timesteps // num_steps
  final_alpha = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
  model = guided(model_fn, guidance_scale)

  def step(x_t, s):
    index, t, t_prev = s
    t_batch = jnp.full(x_t.shape[:1], t, jnp.int32)
    out = model(x_t, t_batch, cond, uncond)
    x0_hat, eps_hat = predict_x0_and_eps(schedule, x_t, t_batch, out, prediction_type)
    x0_hat = _maybe_clip(x0_hat, clip_x0)
    if clip_x0 is not None:  # keep eps consistent with the clipped x0 (as diffusers does)
      a = schedule.alphas_cumprod[t]
      eps_hat = (x_t - jnp.sqrt(a) * x0_hat) / jnp.sqrt(1.0 - a)
    a_t = schedule.alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], final_alpha)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t)) * jnp.sqrt(1.0 - a_t / a_prev)
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps_hat
    noise = jax.random.normal(jax.random.fold_in(rng, index), x_t.shape, x_t.dtype)
    return (jnp.sqrt(a_prev) * x0_hat + direction + sigma * noise).astype(x_t.dtype)

  return _scan_steps(step, x_T, timesteps, prev_timesteps)


def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                clip_x0: float | None = None, num_steps: int | None = None) -> jax.Array:
  """Ancestral DDPM (Ho et al. 2020) over all T steps (or `num_steps` evenly strided ones).

  x_{t'} ~ N(mu(x_t, x0_hat), beta_tilde) with the posterior of the (strided) chain,
  beta_tilde = (1 - a') / (1 - a) * (1 - a / a'); no noise at the last step.
  """
  num_steps = schedule.num_timesteps if num_steps is None else num_steps
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, "leading")
  prev_timesteps = np.append(timesteps[1:], -1)
  model = guided(model_fn, guidance_scale)

  def step(x_t, s):
    index, t, t_prev = s
    t_batch = jnp.full(x_t.shape[:1], t, jnp.int32)
    x0_hat, _ = predict_x0_and_eps(schedule, x_t, t_batch, model(x_t, t_batch, cond, uncond), prediction_type)
    x0_hat = _maybe_clip(x0_hat, clip_x0)
    a_t = schedule.alphas_cumprod[t]
    a_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    beta = 1.0 - a_t / a_prev                                  # beta of the (strided) step t' -> t
    mean = (jnp.sqrt(a_prev) * beta * x0_hat + jnp.sqrt(1.0 - beta) * (1.0 - a_prev) * x_t) / (1.0 - a_t)
    variance = (1.0 - a_prev) / (1.0 - a_t) * beta
    noise = jax.random.normal(jax.random.fold_in(rng, index), x_t.shape, x_t.dtype)
    return (mean + jnp.sqrt(variance) * noise).astype(x_t.dtype)

  return _scan_steps(step, x_T, timesteps, prev_timesteps)


# Sampler name -> function (see config.sample.sampler).
SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample}
