"""Beta schedules, q_sample and the eps / v / x0 parameterizations against closed-form numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion.diffusion import NoiseSchedule, make_betas, predict_x0_and_eps, q_sample, training_target
from latent_diffusion.diffusion.schedule import BETA_SCHEDULES, PREDICTION_TYPES


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
  return NoiseSchedule.create("linear", 1000, 1e-4, 2e-2)


def test_linear_betas_are_evenly_spaced_float32_with_exact_endpoints():
  betas = make_betas("linear", 5, 0.1, 0.5)
  assert betas.dtype == np.float32          # rounded as diffusers does (bit parity: test_sampler_parity.py)
  np.testing.assert_array_equal(betas[[0, -1]], np.float32([0.1, 0.5]))
  np.testing.assert_allclose(betas, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-7)
  np.testing.assert_array_equal(make_betas("linear", 1, 0.1, 0.5), np.float32([0.1]))


def test_scaled_linear_is_linear_in_sqrt_beta_with_stable_diffusion_endpoints():
  betas = make_betas("scaled_linear", 1000, 0.00085, 0.012).astype(np.float64)
  np.testing.assert_allclose(betas[[0, -1]], [0.00085, 0.012], rtol=2e-7)
  steps = np.diff(np.sqrt(betas))
  np.testing.assert_allclose(steps, (0.012**0.5 - 0.00085**0.5) / 999, rtol=2e-4)     # float32 roundings
  # Distinct from 'linear': the midpoint is the square of the mean of the square roots.
  np.testing.assert_allclose(betas[499:501].mean(), ((0.00085**0.5 + 0.012**0.5) / 2) ** 2, rtol=1e-5)


def test_cosine_alpha_bar_follows_nichol_dhariwal_until_the_beta_cap():
  num_timesteps, s = 1000, 0.008
  betas = make_betas("cosine", num_timesteps)
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(num_timesteps)
  expected_alpha_bar = f((t + 1) / num_timesteps) / f(0.0)
  uncapped = betas < np.float32(0.999)
  assert uncapped[:-1].all() and not uncapped[-1]  # only the last beta (where alpha_bar -> 0) hits the cap
  alpha_bar = np.asarray(NoiseSchedule.create("cosine", num_timesteps).alphas_cumprod)
  np.testing.assert_allclose(alpha_bar[uncapped], expected_alpha_bar[uncapped], rtol=2e-5)   # float32 betas
  assert betas[-1] == np.float32(0.999)


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
def test_every_schedule_gives_increasing_betas_and_decreasing_alpha_bar(name):
  betas = make_betas(name, 1000, 0.00085, 0.012)
  assert betas.shape == (1000,)
  assert np.all((betas > 0) & (betas < 1))
  assert np.all(np.diff(betas) > 0)
  alpha_bar = np.asarray(NoiseSchedule.create(name, 1000, 0.00085, 0.012).alphas_cumprod)
  assert alpha_bar.dtype == np.float32
  assert np.all(np.diff(alpha_bar) < 0) and 0 < alpha_bar[-1] < alpha_bar[0] < 1


def test_unknown_schedule_error_lists_the_known_names():
  with pytest.raises(ValueError, match=r"'quadratic'.*\['cosine', 'linear', 'scaled_linear'\]"):
    make_betas("quadratic")


def test_schedule_properties_recover_the_betas(schedule):
  assert schedule.num_timesteps == 1000
  np.testing.assert_allclose(schedule.betas, make_betas("linear", 1000, 1e-4, 2e-2), atol=2e-6)


def test_q_sample_and_v_target_match_the_closed_form(schedule):
  x0, noise = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 2)).astype(np.float32)   # [B, H, W, C] each
  t = np.array([0, 500, 999])
  alpha_bar = np.asarray(schedule.alphas_cumprod, np.float64)[t][:, None, None, None]
  x_t = q_sample(schedule, x0, jnp.asarray(t), noise)
  np.testing.assert_allclose(x_t, np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * noise, atol=1e-6)
  v = training_target(schedule, x0, noise, jnp.asarray(t), "v_prediction")
  np.testing.assert_allclose(v, np.sqrt(alpha_bar) * noise - np.sqrt(1 - alpha_bar) * x0, atol=1e-6)
  np.testing.assert_array_equal(training_target(schedule, x0, noise, t, "epsilon"), noise)
  np.testing.assert_array_equal(training_target(schedule, x0, noise, t, "sample"), x0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_predict_x0_and_eps_inverts_the_training_target(schedule, prediction_type):
  x0, noise = np.random.default_rng(1).normal(size=(2, 4, 3, 3, 2)).astype(np.float32)
  t = jnp.array([1, 250, 750, 990])
  x_t = q_sample(schedule, x0, t, noise)
  target = training_target(schedule, x0, noise, t, prediction_type)
  x0_hat, eps_hat = predict_x0_and_eps(schedule, x_t, t, target, prediction_type)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
  np.testing.assert_allclose(eps_hat, noise, atol=1e-5)


def test_unknown_prediction_type_is_rejected(schedule):
  x = jnp.zeros((1, 2))
  with pytest.raises(ValueError, match="'x0'.*epsilon"):
    training_target(schedule, x, x, jnp.zeros((1,), jnp.int32), "x0")
  with pytest.raises(ValueError, match="'x0'"):
    predict_x0_and_eps(schedule, x, jnp.zeros((1,), jnp.int32), x, "x0")


def test_forward_process_runs_under_jit_with_the_schedule_as_an_argument(schedule):
  @jax.jit
  def roundtrip(schedule, x0, noise, t):
    x_t = q_sample(schedule, x0, t, noise)
    return predict_x0_and_eps(schedule, x_t, t, training_target(schedule, x0, noise, t, "v_prediction"),
                              "v_prediction")

  x0, noise = jax.random.normal(jax.random.key(0), (2, 3, 5))
  x0_hat, eps_hat = roundtrip(schedule, x0, noise, jnp.array([3, 300, 900]))
  np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
  np.testing.assert_allclose(eps_hat, noise, atol=1e-5)
