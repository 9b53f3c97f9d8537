"""Linear multistep samplers: PLMS (PNDM without Runge-Kutta warm-up) and DPM-Solver++(2M).

Both are deterministic ODE solvers that reuse earlier model outputs, carried in the lax.scan carry,
and match diffusers' PNDMScheduler(skip_prk_steps=True) and DPMSolverMultistepScheduler(
algorithm_type='dpmsolver++', solver_type='midpoint') step for step. `rng` is unused (same signature
as the stochastic samplers).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.diffusion.schedule import NoiseSchedule
from latent_diffusion.diffusion.stepping import ModelFn, alpha_bar_at, guided, model_output, scan_steps, x0_and_eps
from latent_diffusion.diffusion.timesteps import dpm_solver_timesteps, sampling_timesteps

# Adams-Bashforth weights on (newest, ..., oldest) outputs, by how many outputs are available.
_ADAMS_BASHFORTH = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
                    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _plms_plan(timesteps: np.ndarray, num_train_timesteps: int) -> dict[str, np.ndarray]:
  """diffusers' PLMS schedule as static per-evaluation arrays ([num_steps + 1] each, or [1] for 1 step).

  The model is called at t_model; the update goes from t_from to t_to (< 0: past t = 0) with the
  output combination `weights` [E, 4] over (this output, last 3 stored ones). Evaluation 1 re-visits
  timestep 2 and instead redoes the first step from x_T with the average of the first two outputs
  (a Heun-like warm-up), and its output is not stored.
  """
  stride = num_train_timesteps // len(timesteps)
  t_model = np.concatenate([timesteps[:2], timesteps[1:]]) if len(timesteps) > 1 else timesteps
  t_from, t_to = t_model.copy(), t_model - stride
  count = np.arange(len(t_model))
  weights = np.zeros((len(t_model), 4))
  for k in count:
    available = max(min(k, 4), 1)            # outputs stored after evaluation k (evaluation 1 stores none)
    weights[k, :available] = _ADAMS_BASHFORTH[available]
  if len(t_model) > 1:
    t_from[1], t_to[1] = t_model[1] + stride, t_model[1]
    weights[1, :2] = 0.5
  return dict(t_model=t_model, t_from=t_from, t_to=t_to, restart=count == 1, store=count != 1, weights=weights)


def plms_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *, num_steps: int,
                cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                spacing: str = "leading", steps_offset: int = 0, set_alpha_to_one: bool = False,
                mask: jax.Array | None = None, x0_known: jax.Array | None = None) -> jax.Array:
  """PLMS (Liu et al. 2022, pseudo linear multistep), x_T [B, ...] -> x_0 [B, ...]; num_steps + 1 model calls.

  Each update is DDIM's eta = 0 transfer from t to t' = t - T // num_steps,
    x_t' = sqrt(a'/a) x_t - (a' - a) e / (a sqrt(1 - a') + sqrt(a (1 - a) a')),
  with e the 4th-order Adams-Bashforth combination of the stored outputs (lower orders while fewer
  are stored). Where this follows diffusers rather than the paper: the first three steps use
  AB1 / a two-call Heun-like step / AB2-AB3 instead of Runge-Kutta warm-up, and the combination is
  over raw model outputs, converted to e at (x_t, t) afterwards (so for v / x0 prediction it mixes
  outputs of different timesteps before conversion; diffusers has no x0 ('sample') PLMS at all).
  Past t = 0, a' = 1 if `set_alpha_to_one` else alpha_bar_0 (diffusers' default: False).
  """
  del rng
  timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
  plan = _plms_plan(timesteps, schedule.num_timesteps)
  final_alpha_bar = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
  model = guided(model_fn, guidance_scale)

  def step(x_t, stored, index, p):
    out = model_output(model, x_t, p["t_model"], cond, uncond)
    combined = p["weights"][0] * out + jnp.tensordot(p["weights"][1:], stored, 1).astype(out.dtype)
    x_from = jnp.where(p["restart"], x_T, x_t)
    _, e = x0_and_eps(schedule, x_from, p["t_from"], combined, prediction_type)
    a, a_prev = schedule.alphas_cumprod[p["t_from"]], alpha_bar_at(schedule, p["t_to"], final_alpha_bar)
    denominator = a * jnp.sqrt(1.0 - a_prev) + jnp.sqrt(a * (1.0 - a) * a_prev)
    x_next = jnp.sqrt(a_prev / a) * x_from - (a_prev - a) / denominator * e
    stored = jnp.where(p["store"], jnp.concatenate([out[None], stored[:-1]]), stored)
    return x_next, stored, a_prev

  xs = {k: jnp.asarray(v, jnp.float32 if k == "weights" else None) for k, v in plan.items()}
  xs.update({k: xs[k].astype(jnp.int32) for k in ("t_model", "t_from", "t_to")})
  stored = jnp.zeros((3, *x_T.shape), x_T.dtype)                          # [3, B, ...], newest first
  return scan_steps(step, x_T, stored, xs, mask=mask, x0_known=x0_known)


def dpm_solver_pp_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: jax.Array, rng: jax.Array, *,
                         num_steps: int, cond: Any = None, uncond: Any = None, guidance_scale: float = 1.0,
                         prediction_type: str = "epsilon", spacing: str = "linspace", steps_offset: int = 0,
                         solver_order: int = 2, lower_order_final: bool = True, final_sigmas_type: str = "zero",
                         mask: jax.Array | None = None, x0_known: jax.Array | None = None) -> jax.Array:
  """DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction), x_T [B, ...] -> x_0 [B, ...].

  With alpha_t = sqrt(a), sigma_t = sqrt(1 - a), lambda_t = log(alpha_t / sigma_t), h = lambda_t' - lambda_t
  and D the model's x0_hat, a step t -> t' (the next visited timestep) is
    x_t' = (sigma_t' / sigma_t) x_t - alpha_t' (e^-h - 1) (D_t + (D_t - D_prev) h / (2 h_prev))
  ('midpoint' form), first order (no D_prev term) at the first step and, when
  `final_sigmas_type` = 'zero' or (`lower_order_final` and num_steps < 15), at the last. The last
  step goes to sigma = 0 ('zero': x_0 = D, exactly) or to t = 0 ('sigma_min'). Timesteps follow
  diffusers' DPM-Solver spacings (timesteps.dpm_solver_timesteps); solver_order 1 is DDIM (eta 0).
  """
  del rng
  # A zero-terminal-SNR schedule has alpha_bar = 0 at its last step, where lambda is -inf; like diffusers'
  # scheduler, floor it at 2^-24 (exactly zero only there).
  schedule = schedule.replace(alphas_cumprod=jnp.where(schedule.alphas_cumprod == 0, 2.0**-24,
                                                        schedule.alphas_cumprod))
  if solver_order not in (1, 2):
    raise ValueError(f"solver_order={solver_order} is not supported; use 1 or 2.")
  final_alpha_bars = {"zero": 1.0, "sigma_min": schedule.alphas_cumprod[0]}
  if final_sigmas_type not in final_alpha_bars:
    raise ValueError(f"Unknown final_sigmas_type {final_sigmas_type!r}; known: {sorted(final_alpha_bars)}.")
  timesteps = dpm_solver_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
  num_steps = len(timesteps)
  orders = np.full(num_steps, solver_order)
  orders[0] = 1
  if final_sigmas_type == "zero" or (lower_order_final and num_steps < 15):
    orders[-1] = 1
  alpha_bar = jnp.append(schedule.alphas_cumprod[timesteps], final_alpha_bars[final_sigmas_type])   # [n + 1]
  lam = 0.5 * (jnp.log(alpha_bar) - jnp.log(1.0 - alpha_bar))           # +inf at sigma = 0
  model = guided(model_fn, guidance_scale)

  def step(x_t, d_prev, index, s):
    out = model_output(model, x_t, s["t"], cond, uncond)
    d, _ = x0_and_eps(schedule, x_t, s["t"], out, prediction_type)
    h = s["lam_next"] - s["lam"]                                        # +inf on the step to sigma = 0
    second = s["order"] == 2
    # h_prev / h, only where both are finite (second-order steps): no inf or NaN even in unused branches.
    ratio = jnp.where(second, (s["lam"] - s["lam_prev"]) / jnp.where(second, h, 1.0), 1.0)
    correction = jnp.where(second, 0.5 / ratio, 0.0) * (d - d_prev)
    sigma_ratio = jnp.sqrt(1.0 - s["a_next"]) / jnp.sqrt(1.0 - s["a"])
    x_next = sigma_ratio * x_t - jnp.sqrt(s["a_next"]) * jnp.expm1(-h) * (d + correction)
    return x_next, d, s["a_next"]

  xs = dict(t=jnp.asarray(timesteps, jnp.int32), order=jnp.asarray(orders), a=alpha_bar[:-1], a_next=alpha_bar[1:],
            lam=lam[:-1], lam_next=lam[1:], lam_prev=jnp.concatenate([lam[:1], lam[:-2]]))
  return scan_steps(step, x_T, jnp.zeros_like(x_T), xs, mask=mask, x0_known=x0_known)
