"""Timestep spacings, samplers on closed-form problems, and classifier-free guidance (diffusers parity:
test_sampler_parity.py).

The sampler tests compare against (a) float64 numpy transcriptions of one or two update steps and
(b) a Gaussian toy problem whose optimal predictor is known in closed form: for data
x0 ~ N(mu, s^2) per dimension, x_t ~ N(sqrt(a) mu, a s^2 + 1 - a) with a = alpha_bar_t, and
  eps*(x_t, t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a),
  x0*(x_t, t)  = mu + sqrt(a) s^2 (x_t - sqrt(a) mu) / (a s^2 + 1 - a),
  v*(x_t, t)   = sqrt(a) eps* - sqrt(1 - a) x0*,
so a correct sampler driven by them draws (approximately) from N(mu, s^2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion.diffusion import SAMPLERS, NoiseSchedule, ddim_sample, ddpm_sample, guided, sampling_timesteps
from latent_diffusion.diffusion.schedule import PREDICTION_TYPES
from latent_diffusion.diffusion.timesteps import dpm_solver_timesteps, previous_timesteps

MU = np.array([1.0, -0.5, 0.0, 2.0], np.float32)
S = np.array([0.5, 1.0, 0.2, 1.5], np.float32)
NUM_SAMPLES = 4096


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
  return NoiseSchedule.create("linear", 1000, 1e-4, 2e-2)


def optimal_model(schedule: NoiseSchedule, prediction_type: str):
  """The posterior-mean predictor of the Gaussian toy data, as a ModelFn on x_t [B, 4]."""
  def model_fn(x_t, t, cond):
    del cond
    a = schedule.alphas_cumprod[t][:, None]                                      # [B, 1]
    residual = (x_t - jnp.sqrt(a) * MU) / (a * S**2 + 1 - a)                     # [B, 4]
    eps, x0 = jnp.sqrt(1 - a) * residual, MU + jnp.sqrt(a) * S**2 * residual
    return {"epsilon": eps, "v_prediction": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0, "sample": x0}[prediction_type]
  return model_fn


def assert_close_to_data(samples, std_rtol: float, mean_atol: float = 0.0):
  """Moments of samples [N, 4] vs N(MU, S^2): 5 standard errors plus the allowed solver bias."""
  samples = np.asarray(samples, np.float64)
  np.testing.assert_array_less(np.abs(samples.mean(0) - MU), 5 * S / np.sqrt(len(samples)) + mean_atol)
  np.testing.assert_array_less(np.abs(samples.std(0) / S - 1), 5 / np.sqrt(2 * len(samples)) + std_rtol)


# ---------------------------------------------------------------- timestep spacings (diffusers)

@pytest.mark.parametrize("spacing, num_train, num_steps, offset, expected", [
    ("leading", 10, 3, 0, [6, 3, 0]),                      # stride 10 // 3 = 3
    ("leading", 10, 4, 1, [7, 5, 3, 1]),                   # stride 2, shifted by steps_offset
    ("leading", 1000, 10, 1, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),   # Stable Diffusion
    ("trailing", 10, 3, 0, [9, 6, 2]),                     # round([10, 6.67, 3.33]) - 1
    ("trailing", 10, 4, 0, [9, 7, 4, 1]),                  # round([10, 7.5, 5, 2.5]) - 1, half to even
    ("trailing", 1000, 4, 1, [999, 749, 499, 249]),        # steps_offset applies to 'leading' only
    ("linspace", 10, 3, 0, [9, 4, 0]),                     # round([0, 4.5, 9]), half to even
    ("linspace", 10, 5, 0, [9, 7, 4, 2, 0]),               # round([0, 2.25, 4.5, 6.75, 9])
    ("linspace", 1000, 4, 0, [999, 666, 333, 0]),
])
def test_timestep_spacings_match_hand_computed_diffusers_values(spacing, num_train, num_steps, offset, expected):
  timesteps = sampling_timesteps(num_train, num_steps, spacing, offset)
  np.testing.assert_array_equal(timesteps, expected)
  assert timesteps.dtype == np.int64


def test_bad_timestep_requests_raise():
  with pytest.raises(ValueError, match=r"'uniform'.*\['leading', 'linspace', 'trailing'\]"):
    sampling_timesteps(1000, 10, "uniform")
  for num_steps in (0, 1001):
    with pytest.raises(ValueError, match=f"num_steps={num_steps}"):
      sampling_timesteps(1000, num_steps)
  with pytest.raises(ValueError, match="steps_offset=1"):
    sampling_timesteps(10, 10, "leading", steps_offset=1)   # would visit t = 10


@pytest.mark.parametrize("spacing, num_steps, offset, expected", [
    ("linspace", 4, 0, [999, 749, 500, 250]),               # linspace(0, 999, 5) without the 0
    ("leading", 4, 1, [801, 601, 401, 201]),                 # stride 1000 // 5, without the 0 (+ offset)
    ("trailing", 4, 1, [999, 749, 499, 249]),                # the usual 'trailing'
])
def test_dpm_solver_timesteps_match_hand_computed_diffusers_values(spacing, num_steps, offset, expected):
  np.testing.assert_array_equal(dpm_solver_timesteps(1000, num_steps, spacing, offset), expected)


def test_previous_timestep_rules():
  timesteps = sampling_timesteps(1000, 7, "trailing")          # [999, 856, 713, 570, 428, 285, 142]
  np.testing.assert_array_equal(previous_timesteps(timesteps, 1000, "next"), [856, 713, 570, 428, 285, 142, -1])
  # DDIM / PNDM: t - 1000 // 7, landing between visited timesteps and on t = 0 (not past it) at the end.
  np.testing.assert_array_equal(previous_timesteps(timesteps, 1000, "stride"), [857, 714, 571, 428, 286, 143, 0])
  with pytest.raises(ValueError, match="'skip'"):
    previous_timesteps(timesteps, 1000, "skip")


def test_trailing_counts_where_diffusers_formula_overshoots_raise():
  with pytest.raises(ValueError, match="gives 62 timesteps for num_steps=61"):
    sampling_timesteps(1000, 61, "trailing")


# ---------------------------------------------------------------- single updates vs numpy

def linear_eps_model(x_t, t, cond):
  """eps_hat = 0.3 x_t + 0.05 t: depends on both inputs, so wrong t or x_t shows up."""
  del cond
  return 0.3 * x_t + 0.05 * t[:, None].astype(x_t.dtype)


def step_noise(rng, index, shape):
  """The sampler's noise z for step `index` (the spec'd fold_in convention), float64."""
  return np.asarray(jax.random.normal(jax.random.fold_in(rng, index), shape), np.float64)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_steps_match_the_numpy_update(set_alpha_to_one):
  small = NoiseSchedule.create("linear", 10, 0.1, 0.2)
  alpha_bar = np.asarray(small.alphas_cumprod, np.float64)
  x_T, rng, eta = np.array([[0.7, -1.2], [2.0, 0.1]], np.float32), jax.random.key(3), 0.5
  x = x_T.astype(np.float64)
  final = 1.0 if set_alpha_to_one else alpha_bar[0]
  for index, (t, a_prev) in enumerate([(5, alpha_bar[0]), (0, final)]):   # 'leading', 2 steps: t = 5, 0
    a = alpha_bar[t]
    eps_hat = 0.3 * x + 0.05 * t
    x0_hat = (x - np.sqrt(1 - a) * eps_hat) / np.sqrt(a)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev)
    x = np.sqrt(a_prev) * x0_hat + np.sqrt(1 - a_prev - sigma**2) * eps_hat + sigma * step_noise(rng, index, x.shape)
  out = ddim_sample(linear_eps_model, small, x_T, rng, num_steps=2, eta=eta, set_alpha_to_one=set_alpha_to_one)
  np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_steps, timesteps", [(None, [3, 2, 1, 0]), (2, [2, 0])])
def test_ddpm_steps_match_the_numpy_posterior(num_steps, timesteps):
  small = NoiseSchedule.create("linear", 4, 0.1, 0.3)
  alpha_bar = np.asarray(small.alphas_cumprod, np.float64)
  x_T, rng = np.array([[0.7, -1.2], [2.0, 0.1]], np.float32), jax.random.key(4)
  x = x_T.astype(np.float64)
  for index, t in enumerate(timesteps):
    a = alpha_bar[t]
    a_prev = alpha_bar[timesteps[index + 1]] if index + 1 < len(timesteps) else 1.0
    beta = 1 - a / a_prev
    x0_hat = (x - np.sqrt(1 - a) * (0.3 * x + 0.05 * t)) / np.sqrt(a)
    mean = np.sqrt(a_prev) * beta / (1 - a) * x0_hat + np.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
    beta_tilde = (1 - a_prev) / (1 - a) * beta
    x = mean + np.sqrt(beta_tilde) * step_noise(rng, index, x.shape)
  out = ddpm_sample(linear_eps_model, small, x_T, rng, num_steps=num_steps)
  np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)


def test_one_ddim_step_at_t0_without_alpha_one_returns_x_T(schedule):
  # a' = alpha_bar_0 = a: the update is the identity (eps_hat re-noises x0_hat back to x_t).
  x_T = jax.random.normal(jax.random.key(0), (3, 2))
  out = ddim_sample(linear_eps_model, schedule, x_T, jax.random.key(1), num_steps=1, eta=1.0, set_alpha_to_one=False)
  np.testing.assert_allclose(out, x_T, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])        # PNDM / DPM-Solver have no clip_sample in diffusers
def test_clip_x0_bounds_the_final_prediction(sampler, schedule):
  huge_x0 = lambda x_t, t, cond: jnp.full_like(x_t, -50.0)
  out = SAMPLERS[sampler](huge_x0, schedule, jnp.zeros((2, 3)), jax.random.key(0), num_steps=10,
                          prediction_type="sample", clip_x0=1.5)
  np.testing.assert_allclose(out, -1.5, atol=1e-6)   # the last step returns the clipped x0_hat


# ---------------------------------------------------------------- determinism (acceptance 1)

def test_ddim_eta0_is_deterministic_and_eta_positive_uses_the_rng(schedule):
  run = jax.jit(lambda x, rng, eta: ddim_sample(optimal_model(schedule, "epsilon"), schedule, x, rng,
                                                num_steps=20, eta=eta))
  x_T, other_x_T = jax.random.normal(jax.random.key(0), (2, 16, 4))
  det = run(x_T, jax.random.key(1), 0.0)
  np.testing.assert_array_equal(det, run(x_T, jax.random.key(1), 0.0))
  np.testing.assert_array_equal(det, run(x_T, jax.random.key(2), 0.0))   # eta = 0 ignores the sampler rng
  assert np.abs(det - run(other_x_T, jax.random.key(1), 0.0)).min() > 1e-3
  noisy = run(x_T, jax.random.key(1), 0.7)
  np.testing.assert_array_equal(noisy, run(x_T, jax.random.key(1), 0.7))
  assert np.abs(noisy - run(x_T, jax.random.key(2), 0.7)).mean() > 1e-2
  assert np.abs(noisy - det).mean() > 1e-2


# ---------------------------------------------------------------- Gaussian toy (acceptance 2)

@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_eta1_and_ddpm_draw_the_data_distribution(schedule, prediction_type):
  model = optimal_model(schedule, prediction_type)
  ddim = jax.jit(lambda x, rng: ddim_sample(model, schedule, x, rng, num_steps=1000, eta=1.0,
                                            prediction_type=prediction_type))
  ddpm = jax.jit(lambda x, rng: ddpm_sample(model, schedule, x, rng, prediction_type=prediction_type))
  x_T = jax.random.normal(jax.random.key(0), (2, NUM_SAMPLES, 4))                # independent draws
  from_ddim = np.asarray(ddim(x_T[0], jax.random.key(1)))
  from_ddpm = np.asarray(ddpm(x_T[1], jax.random.key(2)))
  # 1000 ancestral steps are ~1.5% narrow for s = 0.2 (measured at 65k samples): allow 3%.
  assert_close_to_data(from_ddim, std_rtol=0.03, mean_atol=0.01)
  assert_close_to_data(from_ddpm, std_rtol=0.03, mean_atol=0.01)
  # Two-sample agreement: differences within 5 standard errors of a difference of two means / stds.
  np.testing.assert_array_less(np.abs(from_ddim.mean(0) - from_ddpm.mean(0)), 5 * S * np.sqrt(2 / NUM_SAMPLES))
  np.testing.assert_array_less(np.abs(from_ddim.std(0) / from_ddpm.std(0) - 1), 5 / np.sqrt(NUM_SAMPLES))
  # With the same x_T and rng, DDIM at eta = 1 over all steps IS the ancestral sampler, path by path.
  np.testing.assert_allclose(ddim(x_T[1], jax.random.key(2)), from_ddpm, atol=1e-3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_deterministic_ddim_maps_gaussian_noise_to_the_data(schedule, prediction_type):
  model = optimal_model(schedule, prediction_type)
  x_T = jax.random.normal(jax.random.key(0), (NUM_SAMPLES, 4))
  out = np.asarray(jax.jit(lambda x: ddim_sample(model, schedule, x, jax.random.key(1), num_steps=50,
                                                 prediction_type=prediction_type))(x_T))
  # The exact flow is affine per dimension; DDIM is its first-order (Euler) discretization, which
  # shrinks the spread most where s is small next to the last step's noise level (~12% at s = 0.2).
  assert_close_to_data(out, std_rtol=0.13, mean_atol=0.03)
  # Without noise the flow is deterministic in x_T: out = m * x_T + c (an affine map per dimension).
  slope = np.cov(np.asarray(x_T).T, out.T).diagonal(4) / np.asarray(x_T).var(0, ddof=1)
  np.testing.assert_allclose(out, slope * np.asarray(x_T) + (out.mean(0) - slope * np.asarray(x_T).mean(0)),
                             atol=1e-4)
  # More steps shrink the discretization error: 250 steps get within 4% (s = 0.2) of the data.
  fine = jax.jit(lambda x: ddim_sample(model, schedule, x, jax.random.key(1), num_steps=250,
                                       prediction_type=prediction_type))(x_T)
  assert_close_to_data(fine, std_rtol=0.04, mean_atol=0.01)


# ---------------------------------------------------------------- guidance (acceptance 3)

def conditional_model(calls: list):
  """out = x_t * (1 + y) + context summed: conditional on a pytree {'y': [B], 'context': [B, L]}."""
  def model_fn(x_t, t, cond):
    calls.append(x_t.shape[0])
    assert t.shape == x_t.shape[:1] and t.dtype == jnp.int32
    scale = 1.0 + cond["y"][:, None].astype(x_t.dtype)
    return x_t * scale + cond["context"].sum(-1, keepdims=True)
  return model_fn


def test_guided_output_is_uncond_plus_scale_times_difference_from_one_doubled_call():
  calls = []
  model_fn = conditional_model(calls)
  x_t, t = jax.random.normal(jax.random.key(0), (3, 2)), jnp.array([5, 5, 5], jnp.int32)
  cond = {"y": jnp.array([1, 2, 3]), "context": jnp.ones((3, 4))}
  uncond = {"y": jnp.zeros((3,), jnp.int32), "context": jnp.zeros((3, 4))}
  out_cond, out_uncond = model_fn(x_t, t, cond), model_fn(x_t, t, uncond)
  calls.clear()
  out = guided(model_fn, 4.0)(x_t, t, cond, uncond)
  assert calls == [6]
  np.testing.assert_allclose(out, out_uncond + 4.0 * (out_cond - out_uncond), rtol=1e-6)
  calls.clear()
  np.testing.assert_array_equal(guided(model_fn, 1.0)(x_t, t, cond, uncond), out_cond)
  np.testing.assert_array_equal(guided(model_fn, 4.0)(x_t, t, cond, None), out_cond)
  assert calls == [3, 3]   # plain calls: no doubled batch when guidance is off


def test_guided_sampler_calls_the_model_once_per_step_on_the_doubled_batch(schedule):
  seen = []

  def model_fn(x_t, t, cond):
    jax.debug.callback(lambda size: seen.append(int(size)), x_t.shape[0])   # runs every step
    return 0.1 * x_t + cond["y"][:, None]

  cond, uncond = {"y": jnp.array([1.0, 2.0])}, {"y": jnp.zeros((2,))}
  sample = jax.jit(lambda x, scale: ddim_sample(model_fn, schedule, x, jax.random.key(0), num_steps=7,
                                                cond=cond, uncond=uncond, guidance_scale=scale))
  x_T = jnp.ones((2, 3))
  guided_out = sample(x_T, 3.0)
  jax.effects_barrier()
  assert seen == [4] * 7
  # The traced scale gives the same result as a Python one, and scale 1 equals the conditional run.
  np.testing.assert_allclose(guided_out, ddim_sample(model_fn, schedule, x_T, jax.random.key(0), num_steps=7,
                                                     cond=cond, uncond=uncond, guidance_scale=3.0), rtol=1e-5)
  np.testing.assert_allclose(sample(x_T, 1.0), ddim_sample(model_fn, schedule, x_T, jax.random.key(0), num_steps=7,
                                                           cond=cond), rtol=1e-5)
  assert np.abs(guided_out - sample(x_T, 1.0)).max() > 1e-2


# ---------------------------------------------------------------- jit (acceptance 4)

@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_jit_with_the_schedule_as_an_argument(name, schedule):
  sampler = SAMPLERS[name]
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))                         # [B, H, W, C]
  model_fn = lambda x_t, t, cond: 0.2 * x_t * (1.0 + cond["y"][:, None, None, None])
  cond, uncond = {"y": jnp.array([1.0, 2.0])}, {"y": jnp.zeros((2,))}
  run = lambda sch, x, rng: sampler(model_fn, sch, x, rng, num_steps=5, cond=cond, uncond=uncond, guidance_scale=2.0)
  jitted = jax.jit(run)(schedule, x_T, jax.random.key(1))
  assert jitted.shape == x_T.shape and jitted.dtype == jnp.float32
  np.testing.assert_allclose(jitted, run(schedule, x_T, jax.random.key(1)), rtol=1e-5, atol=1e-6)
