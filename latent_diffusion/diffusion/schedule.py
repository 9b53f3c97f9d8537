"""Noise schedules, the forward process q(x_t | x_0) and the three output parameterizations.

Pure math over arrays (no Flax modules). Notation of Ho et al. (2020) / Song et al. (2021):
beta_t, alpha_bar_t = prod_{s<=t} (1 - beta_s),
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I),
and the v target of Salimans & Ho (2022), v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0.
Timesteps t are integers in [0, T); t = 0 is the least noisy step.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np


def _linspace_float32(start: float, end: float, num: int) -> np.ndarray:
  """torch.linspace(start, end, num, dtype=float32), bit for bit: a float32 stride, each point rounded
  once, and the upper half counted down from `end` (so both endpoints are exact; num = 1 gives start)."""
  start, end = np.float32(start), np.float32(end)
  stride = np.float64((end - start) / np.float32(max(num - 1, 1)))
  k = np.arange(num, dtype=np.float64)
  return np.where(k < max(num // 2, 1), start + stride * k, end - stride * (num - 1 - k)).astype(np.float32)


def _linear(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  return _linspace_float32(beta_start, beta_end, num_timesteps)


def _scaled_linear(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  # Linear in sqrt(beta): the schedule of LDM and Stable Diffusion (0.00085 -> 0.012).
  return _linspace_float32(beta_start**0.5, beta_end**0.5, num_timesteps) ** 2


def _cosine(num_timesteps: int, beta_start: float, beta_end: float, s: float = 0.008,
            max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021): alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2), u = t / T.

  beta_start / beta_end do not apply. Betas are capped at `max_beta` because beta -> 1 at u = 1.
  This is diffusers' 'squaredcos_cap_v2' (float64 math, then float32).
  """
  del beta_start, beta_end
  f = np.cos((np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta).astype(np.float32)


# Schedule name -> fn(num_timesteps, beta_start, beta_end) -> betas float32 [T].
BETA_SCHEDULES = {"linear": _linear, "scaled_linear": _scaled_linear, "cosine": _cosine}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def make_betas(name: str, num_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 2e-2) -> np.ndarray:
  """beta_t, float32 [T], for the schedule `name` (a key of BETA_SCHEDULES).

  Rounded to float32 exactly as diffusers' schedulers round them, so that schedules (and samplers)
  agree with diffusers bit for bit rather than to ~1e-6.
  """
  if name not in BETA_SCHEDULES:
    raise ValueError(f"Unknown beta schedule {name!r}; known: {sorted(BETA_SCHEDULES)}.")
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
  return BETA_SCHEDULES[name](num_timesteps, beta_start, beta_end)


def _cumprod(values: np.ndarray) -> np.ndarray:
  """float32 cumulative product, accumulated in float64 (float32 products drift over 1000 steps), as
  torch's CPU cumprod does."""
  return np.cumprod(values, dtype=np.float64).astype(np.float32)


def zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """betas float32 [T] rescaled to zero terminal SNR, in float32 step by step as diffusers computes them."""
  alphas_bar_sqrt = np.sqrt(_cumprod(np.float32(1.0) - betas))
  first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
  alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
  alphas_bar = alphas_bar_sqrt**2
  alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
  return (np.float32(1.0) - alphas).astype(np.float32)


@flax.struct.dataclass
class NoiseSchedule:
  """The discrete forward process, stored as alpha_bar_t (a pytree: pass it through jit)."""
  alphas_cumprod: jax.Array  # alpha_bar_t, float32 [T]

  @classmethod
  def create(cls, name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
             rescale_zero_terminal_snr: bool = False) -> "NoiseSchedule":
    """rescale_zero_terminal_snr: shift and scale sqrt(alpha_bar_t) so that alpha_bar_{T-1} = 0 while
    alpha_bar_0 is kept (Lin et al. 2024, Algorithm 1; diffusers' rescale_betas_zero_snr)."""
    betas = make_betas(name, num_timesteps, beta_start, beta_end)
    if rescale_zero_terminal_snr:
      betas = zero_terminal_snr(betas)
    return cls(alphas_cumprod=jnp.asarray(_cumprod(np.float32(1.0) - betas)))    # float32, as torch

  @property
  def num_timesteps(self) -> int:
    return self.alphas_cumprod.shape[0]

  @property
  def betas(self) -> jax.Array:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, float32 [T]."""
    alpha_bar_prev = jnp.concatenate([jnp.ones((1,), self.alphas_cumprod.dtype), self.alphas_cumprod[:-1]])
    return 1.0 - self.alphas_cumprod / alpha_bar_prev


def _gather(values: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
  """values[t] for t [B], shaped [B, 1, ..., 1] to broadcast against `like` [B, ...]."""
  return values[t].reshape(t.shape + (1,) * (like.ndim - t.ndim)).astype(like.dtype)


def _check_prediction_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; known: {list(PREDICTION_TYPES)}.")


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.  x0, noise [B, ...]; t int [B]."""
  alpha_bar_t = _gather(schedule.alphas_cumprod, t, x0)                 # [B, 1, ..., 1]
  return jnp.sqrt(alpha_bar_t) * x0 + jnp.sqrt(1.0 - alpha_bar_t) * noise


def training_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array,
                    prediction_type: str) -> jax.Array:
  """What the network regresses at (x_t, t): eps, v, or x0 itself.  [B, ...] like x0."""
  _check_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return noise
  if prediction_type == "sample":
    return x0
  alpha_bar_t = _gather(schedule.alphas_cumprod, t, x0)
  return jnp.sqrt(alpha_bar_t) * noise - jnp.sqrt(1.0 - alpha_bar_t) * x0


def predict_x0_and_eps(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, model_output: jax.Array,
                       prediction_type: str) -> tuple[jax.Array, jax.Array]:
  """(x0_hat, eps_hat), each [B, ...], implied by the model output at (x_t, t [B]).

  Inverts `training_target`: fed the true target, returns the true x0 and eps.
  """
  _check_prediction_type(prediction_type)
  alpha_bar_t = _gather(schedule.alphas_cumprod, t, x_t)
  sqrt_a, sqrt_1ma = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
  if prediction_type == "epsilon":
    eps_hat = model_output
    x0_hat = (x_t - sqrt_1ma * eps_hat) / sqrt_a
  elif prediction_type == "v_prediction":
    # (x_t, v) is a rotation of (x0, eps) by the angle with cos = sqrt_a, sin = sqrt_1ma.
    x0_hat = sqrt_a * x_t - sqrt_1ma * model_output
    eps_hat = sqrt_1ma * x_t + sqrt_a * model_output
  else:
    x0_hat = model_output
    eps_hat = (x_t - sqrt_a * x0_hat) / sqrt_1ma
  return x0_hat, eps_hat
