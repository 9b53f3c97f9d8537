"""Noise schedules and the forward process q(x_t | x_0) (math only, no Flax modules).

Notation (DDPM / DDIM papers): beta_t, alpha_bar_t = prod_{s<=t} (1 - beta_s),
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; the v target (Salimans & Ho) is
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0. Timesteps t are integers in [0, T).
"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np


def _linear(num_timesteps, beta_start, beta_end):
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def _scaled_linear(num_timesteps, beta_start, beta_end):
  # Linear in sqrt(beta): the LDM / Stable Diffusion schedule.
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def _cosine(num_timesteps, beta_start=None, beta_end=None, s=0.008, max_beta=0.999):
  # Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2); betas capped.
  del beta_start, beta_end
  alpha_bar = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  steps = np.arange(num_timesteps, dtype=np.float64)
  ratios = np.array([alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps) for i in steps])
  return np.minimum(1.0 - ratios, max_beta)


BETA_SCHEDULES = {"linear": _linear, "scaled_linear": _scaled_linear, "cosine": _cosine}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def make_betas(name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
  """beta_t, float64 [T], of the schedule named `name` (a key of BETA_SCHEDULES)."""
  if name not in BETA_SCHEDULES:
    raise ValueError(f"Unknown beta schedule {name!r}; known: {sorted(BETA_SCHEDULES)}.")
  return BETA_SCHEDULES[name](num_timesteps, beta_start, beta_end)


@flax.struct.dataclass
class NoiseSchedule:
  """The discrete forward process, as alpha_bar_t float32 [T]."""
  alphas_cumprod: jax.Array

  @classmethod
  def create(cls, name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
    betas = make_betas(name, num_timesteps, beta_start, beta_end)
    return cls(alphas_cumprod=jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))

  @property
  def num_timesteps(self) -> int:
    return self.alphas_cumprod.shape[0]

  @property
  def betas(self) -> jax.Array:
    previous = jnp.concatenate([jnp.ones((1,), self.alphas_cumprod.dtype), self.alphas_cumprod[:-1]])
    return 1.0 - self.alphas_cumprod / previous


def _per_example(values: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
  """values[t] [B] broadcast against `like` [B, ...]."""
  return values[t].reshape(t.shape + (1,) * (like.ndim - t.ndim)).astype(like.dtype)


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.  x0, noise [B, ...]; t int [B]."""
  alpha_bar = _per_example(schedule.alphas_cumprod, t, x0)
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def _check_prediction_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}.")


def training_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array,
                    prediction_type: str) -> jax.Array:
  """What the network regresses: eps, v = sqrt(a) eps - sqrt(1-a) x0, or x0 itself."""
  _check_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return noise
  if prediction_type == "sample":
    return x0
  alpha_bar = _per_example(schedule.alphas_cumprod, t, x0)
  return jnp.sqrt(alpha_bar) * noise - jnp.sqrt(1.0 - alpha_bar) * x0


def predict_x0_and_eps(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, model_output: jax.Array,
                       prediction_type: str) -> tuple[jax.Array, jax.Array]:
  """(x0_hat, eps_hat) implied by the model output at (x_t, t)."""
  _check_prediction_type(prediction_type)
  alpha_bar = _per_example(schedule.alphas_cumprod, t, x_t)
  sqrt_a, sqrt_1ma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
  if prediction_type == "epsilon":
    eps_hat = model_output
    x0_hat = (x_t - sqrt_1ma * eps_hat) / sqrt_a
  elif prediction_type == "v_prediction":
    x0_hat = sqrt_a * x_t - sqrt_1ma * model_output
    eps_hat = sqrt_1ma * x_t + sqrt_a * model_output
  else:
    x0_hat = model_output
    eps_hat = (x_t - sqrt_a * x0_hat) / sqrt_1ma
  return x0_hat, eps_hat
