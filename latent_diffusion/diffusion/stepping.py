"""What every sampler shares: classifier-free guidance, the model call, and the step scan with inpainting.

A sampler step maps (x_t, carry, step index, per-step inputs) -> (x_t', carry, alpha_bar_t'), where alpha_bar_t'
is the noise level x_t' is at. `scan_steps` runs the steps in one lax.scan and, for inpainting,
replaces the known region after each step by x0_known noised to that same level.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from latent_diffusion.diffusion.schedule import NoiseSchedule, predict_x0_and_eps

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
GuidedFn = Callable[[jax.Array, jax.Array, Any, Any], jax.Array]
StepFn = Callable[[jax.Array, Any, jax.Array, Any], tuple[jax.Array, Any, jax.Array]]


def _pairs(a: jax.Array, b: jax.Array) -> jax.Array:
  """[B, ...] twice -> [2B, ...] rows a_0, b_0, a_1, b_1, ..."""
  return jnp.stack([a, b], axis=1).reshape(-1, *a.shape[1:])


def guided(model_fn: ModelFn, guidance_scale: float | jax.Array) -> GuidedFn:
  """Classifier-free guidance (Ho & Salimans 2022) as fn(x_t, t, cond, uncond) -> output [B, ...].

  out = out_uncond + s * (out_cond - out_uncond), from ONE model call on the 2B rows (cond_0, uncond_0,
  cond_1, ...): pairs rather than [cond; uncond], so that a batch sharded over devices keeps each example's two rows
  on its own device (concatenation moved rows between devices every step: collective-permutes and all-to-alls in
  the compiled data-parallel sampler). With uncond None or a Python scale of exactly 1, a plain call
  model_fn(x_t, t, cond). A traced scale always takes the guided path (so changing it does not recompile).
  """
  plain = isinstance(guidance_scale, (int, float)) and guidance_scale == 1

  def fn(x_t, t, cond, uncond):
    if uncond is None or plain:
      return model_fn(x_t, t, cond)
    out = model_fn(_pairs(x_t, x_t), _pairs(t, t), jax.tree.map(_pairs, cond, uncond))     # [2B, ...]
    out = out.reshape(-1, 2, *out.shape[1:])
    out_cond, out_uncond = out[:, 0], out[:, 1]
    return out_uncond + guidance_scale * (out_cond - out_uncond)

  return fn


def model_output(model: GuidedFn, x_t: jax.Array, t: jax.Array, cond, uncond) -> jax.Array:
  """The (guided) model output [B, ...] at x_t [B, ...] and scalar timestep t."""
  return model(x_t, jnp.full(x_t.shape[:1], t, jnp.int32), cond, uncond)


def x0_and_eps(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, output: jax.Array, prediction_type: str,
               clip_x0: float | None = None) -> tuple[jax.Array, jax.Array]:
  """(x0_hat, eps_hat) [B, ...] at scalar t; x0_hat clipped to [-clip_x0, clip_x0] if set, eps_hat not

  (diffusers' use_clipped_model_output=False).
  """
  x0_hat, eps_hat = predict_x0_and_eps(schedule, x_t, jnp.full(x_t.shape[:1], t, jnp.int32), output,
                                       prediction_type)
  if clip_x0 is not None:
    x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
  return x0_hat, eps_hat


def alpha_bar_at(schedule: NoiseSchedule, t: jax.Array, final_alpha_bar) -> jax.Array:
  """alpha_bar_t, or `final_alpha_bar` for t < 0 (past the end of the chain)."""
  return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], final_alpha_bar)


def step_noise(rng: jax.Array, index: jax.Array, like: jax.Array) -> jax.Array:
  """z ~ N(0, I) shaped like `like`, of step `index`: normal(fold_in(rng, index)) (tests rely on it)."""
  return jax.random.normal(jax.random.fold_in(rng, index), like.shape, like.dtype)


def _check_inpainting(x_T: jax.Array, mask, x0_known) -> None:
  if (mask is None) != (x0_known is None):
    raise ValueError("Inpainting needs both `mask` and `x0_known` (or neither).")
  if mask is None:
    return
  if x0_known.shape != x_T.shape:
    raise ValueError(f"x0_known has shape {x0_known.shape}; expected x_T's shape {x_T.shape}.")
  try:
    broadcast = jnp.broadcast_shapes(mask.shape, x_T.shape)
  except ValueError:
    broadcast = None
  if broadcast != x_T.shape:
    raise ValueError(f"mask of shape {mask.shape} does not broadcast to x_T's shape {x_T.shape}.")


def scan_steps(step_fn: StepFn, x_T: jax.Array, carry: Any, xs: Any, *, mask: jax.Array | None = None,
               x0_known: jax.Array | None = None) -> jax.Array:
  """x_0 [B, ...] after step_fn over the leading axis of `xs` (one lax.scan).

  Inpainting (LDM's DDIM inpainting; 1 in `mask` = keep): after each step,
    x = mask * (sqrt(a') x0_known + sqrt(1 - a') x_T) + (1 - mask) * x,   a' = the step's alpha_bar_t',
  and after the last step x = mask * x0_known + (1 - mask) * x. The noise is x_T itself, the
  convention of diffusers' inpainting pipeline at strength 1: the known region then follows one
  forward-process path, instead of being re-noised independently at every step.
  """
  _check_inpainting(x_T, mask, x0_known)
  num_steps = jax.tree.leaves(xs)[0].shape[0]

  def body(state, inputs):
    x_t, inner = state
    index, step_inputs = inputs
    x_next, inner, alpha_bar_next = step_fn(x_t, inner, index, step_inputs)
    if mask is not None:
      noised = jnp.sqrt(alpha_bar_next) * x0_known + jnp.sqrt(1.0 - alpha_bar_next) * x_T
      known = jnp.where(index == num_steps - 1, x0_known, noised)
      x_next = mask * known + (1 - mask) * x_next
    return (x_next.astype(x_t.dtype), inner), None

  (x_0, _), _ = jax.lax.scan(body, (x_T, carry), (jnp.arange(num_steps), xs))
  return x_0
