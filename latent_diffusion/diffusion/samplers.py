"""Samplers as one lax.scan over steps, matching diffusers' schedulers step for step.

A sampler is `sampler(model_fn, schedule, x_T, rng, *, cond=None, uncond=None, guidance_scale=1.0,
**options) -> x_0 [B, ...]`, with `model_fn(x_t, t, cond) -> model_output` (x_t [B, ...]; t int32 [B];
cond a pytree of arrays with leading axis B, or None). Everything is jit-able; `num_steps` and the
string options must be static. The noise z of step i is normal(fold_in(rng, i)). Every sampler takes
`prediction_type` (epsilon | v_prediction | sample) and inpainting inputs `mask` / `x0_known` (see
stepping.scan_steps). No model code here.

| name          | diffusers scheduler                                  | function             |
|---------------|------------------------------------------------------|----------------------|
| ddpm          | DDPMScheduler (variance_type 'fixed_small')          | ddpm_sample          |
| ddim          | DDIMScheduler                                        | ddim_sample          |
| plms          | PNDMScheduler(skip_prk_steps=True)                   | multistep.plms_sample |
| dpm_solver_pp | DPMSolverMultistepScheduler('dpmsolver++', order 2)  | multistep.dpm_solver_pp_sample |
"""

import inspect
from typing import Any

import jax
import jax.numpy as jnp

from latent_diffusion.diffusion.multistep import dpm_solver_pp_sample, plms_sample
from latent_diffusion.diffusion.schedule import NoiseSchedule
from latent_diffusion.diffusion.stepping import (ModelFn, alpha_bar_at, guided, model_output, scan_steps,
                                                 step_noise, x0_and_eps)
from latent_diffusion.diffusion.timesteps import previous_timesteps, sampling_timesteps


def _timestep_pairs(timesteps, t_prev) -> tuple[jax.Array, jax.Array]:
  return jnp.asarray(timesteps, jnp.int32), jnp.asarray(t_prev, jnp.int32)


def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *, num_steps: int,
                eta: float = 0.0, cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
                prediction_type: str = "epsilon", spacing: str = "leading", steps_offset: int = 0,
                set_alpha_to_one: bool = True, clip_x0: float | None = None, mask: jax.Array | None = None,
                x0_known: jax.Array | None = None) -> jax.Array:
  """DDIM (Song et al. 2021), x_T [B, ...] -> x_0 [B, ...] in `num_steps` steps t -> t':

    x_t' = sqrt(a') x0_hat + sqrt(1 - a' - sigma_t^2) eps_hat + sigma_t z,
    sigma_t = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a'),   a = alpha_bar_t, a' = alpha_bar_t'.

  eta = 0 follows the probability-flow ODE deterministically; eta = 1 with all T steps is DDPM's
  ancestral sampler. As in diffusers (not the paper), t' = t - T // num_steps rather than the next
  visited timestep: with 'trailing' / 'linspace' spacing x_t' sits between two visited timesteps.
  Past t = 0, a' = 1 if `set_alpha_to_one` else alpha_bar_0. eps_hat is the model's even when x0_hat
  is clipped to [-clip_x0, clip_x0] (diffusers' clip_sample / clip_sample_range). Unlike diffusers,
  1 - a' - sigma^2 is floored at 0 (float32 rounding can push it below 0 at eta = 1: NaN there).
  """
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
  final_alpha_bar = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
  model = guided(model_fn, guidance_scale)

  def step(x_t, carry, index, ts):
    t, t_prev = ts
    out = model_output(model, x_t, t, cond, uncond)
    x0_hat, eps_hat = x0_and_eps(schedule, x_t, t, out, prediction_type, clip_x0)
    a, a_prev = schedule.alphas_cumprod[t], alpha_bar_at(schedule, t_prev, final_alpha_bar)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps_hat
    return jnp.sqrt(a_prev) * x0_hat + direction + sigma * step_noise(rng, index, x_t), carry, a_prev

  t_prev = previous_timesteps(timesteps, schedule.num_timesteps, "stride")
  return scan_steps(step, x_T, (), _timestep_pairs(timesteps, t_prev), mask=mask, x0_known=x0_known)


def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                clip_x0: float | None = None, num_steps: int | None = None, spacing: str = "leading",
                steps_offset: int = 0, mask: jax.Array | None = None, x0_known: jax.Array | None = None) -> jax.Array:
  """Ancestral DDPM (Ho et al. 2020), x_T [B, ...] -> x_0 [B, ...], over all T steps (or `num_steps`
  spaced ones, t' = the next visited timestep, with beta_t the beta of the strided step t -> t'):

    x_t' ~ N(mu_t, beta_tilde_t),  mu_t = (sqrt(a') beta_t x0_hat + sqrt(1 - beta_t) (1 - a') x_t) / (1 - a),
    beta_tilde_t = (1 - a') / (1 - a) * beta_t,  beta_t = 1 - a / a',  a' = 1 after the last step.

  As diffusers' DDPMScheduler ('fixed_small'): no noise at t = 0, and beta_tilde floored at 1e-20.
  x0_hat is clipped to [-clip_x0, clip_x0] if set (clip_sample / clip_sample_range).
  """
  num_steps = schedule.num_timesteps if num_steps is None else num_steps
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
  model = guided(model_fn, guidance_scale)

  def step(x_t, carry, index, ts):
    t, t_prev = ts
    x0_hat, _ = x0_and_eps(schedule, x_t, t, model_output(model, x_t, t, cond, uncond), prediction_type, clip_x0)
    a, a_prev = schedule.alphas_cumprod[t], alpha_bar_at(schedule, t_prev, 1.0)
    alpha = a / a_prev                                               # 1 - beta_t of the strided step
    beta = 1.0 - alpha
    mean = jnp.sqrt(a_prev) * beta / (1.0 - a) * x0_hat + jnp.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a) * x_t
    std = jnp.where(t > 0, jnp.sqrt(jnp.maximum((1.0 - a_prev) / (1.0 - a) * beta, 1e-20)), 0.0)
    return mean + std * step_noise(rng, index, x_t), carry, a_prev

  t_prev = previous_timesteps(timesteps, schedule.num_timesteps, "next")
  return scan_steps(step, x_T, (), _timestep_pairs(timesteps, t_prev), mask=mask, x0_known=x0_known)


# Sampler name -> function (config.sample.sampler).
SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "plms": plms_sample, "dpm_solver_pp": dpm_solver_pp_sample}


# Arguments every sampler takes that are inputs rather than options.
_INPUTS = {"model_fn", "schedule", "x_T", "rng", "cond", "uncond", "guidance_scale", "mask", "x0_known"}


def sampler_options(name: str, defaults: dict | None = None, **overrides) -> dict:
  """Keyword options for SAMPLERS[name], the same way for every sampler.

  `defaults` (a model's schedule-specific options, e.g. from scheduler_config.json, or config.sample) are
  kept where the sampler takes them; `overrides` (the caller's choices; None = not given) must be options
  the sampler takes, else ValueError naming them (e.g. eta for plms).
  """
  if name not in SAMPLERS:
    raise ValueError(f"Unknown sampler {name!r}; known: {sorted(SAMPLERS)}.")
  accepted = set(inspect.signature(SAMPLERS[name]).parameters) - _INPUTS
  options = {key: value for key, value in (defaults or {}).items() if key in accepted}
  given = {key: value for key, value in overrides.items() if value is not None}
  refused = sorted(set(given) - accepted)
  if refused:
    raise ValueError(f"Sampler {name!r} takes no option {refused}; its options: {sorted(accepted)}.")
  return options | given
