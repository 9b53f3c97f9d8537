"""Our samplers against diffusers' schedulers (torch float32), driven by the same toy model and noise.

The toy model is a fixed random channel-mixing map plus nonlinearities of x_t, t and the condition,
written once over an array namespace (jax.numpy or torch). Stochastic samplers draw step i's noise
as normal(fold_in(rng, i)); the test draws the same arrays and hands them to diffusers
(DDIM's `variance_noise`; DDPM's noise via its `randn_tensor`). Parity: ||ours - ref|| / ||ref||.
"""

import inspect

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_ddpm

from latent_diffusion.diffusion import SAMPLERS, NoiseSchedule, make_betas
from latent_diffusion.weights.scheduler import (from_diffusers_scheduler, schedule_config_from_diffusers,
                                                to_diffusers_scheduler)

SHAPE = (2, 4, 4, 3)                                                           # [B, H, W, C]
GUIDANCE = 7.5
RTOL = 1e-5
_params = np.random.default_rng(0)
MIX = (_params.normal(size=(3, 3)) / np.sqrt(3)).astype(np.float32)           # [C, C]
BIAS = _params.normal(size=(3,)).astype(np.float32)


def toy_model(x_t, t, y, mix, bias, xp):
  """out [B, H, W, C] from x_t [B, H, W, C], t [B] float and condition y [B], over namespace xp."""
  u = (t / 1000.0)[:, None, None, None]
  mixed = x_t @ mix + 0.3 * xp.roll(x_t, 1, 1)                                 # channels and rows
  return 0.8 * xp.tanh(mixed + bias * xp.sin(3.0 * u) + 0.5 * y[:, None, None, None]) + 0.3 * x_t * (1.0 - u)


def jax_model(x_t, t, cond):
  return toy_model(x_t, t.astype(jnp.float32), cond["y"], MIX, BIAS, jnp)


def torch_model(x_t, t, y):
  t = torch.full((x_t.shape[0],), float(t))
  return toy_model(x_t, t, torch.from_numpy(y), torch.from_numpy(MIX), torch.from_numpy(BIAS), torch)


COND, UNCOND = np.array([1.0, -0.5], np.float32), np.zeros((2,), np.float32)
SCHEDULES = {"scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
             "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2),
             "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2")}


def our_schedule(name: str) -> NoiseSchedule:
  betas = SCHEDULES[name]
  return NoiseSchedule.create("cosine" if name == "squaredcos_cap_v2" else name, 1000,
                              betas.get("beta_start", 1e-4), betas.get("beta_end", 2e-2))


def relative_error(ours, ref) -> float:
  return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def step_noises(rng, count: int) -> list[np.ndarray]:
  return [np.array(jax.random.normal(jax.random.fold_in(rng, i), SHAPE)) for i in range(count)]


def run_diffusers(scheduler, x_T, num_steps, guided, step_kwargs=None, inpaint=None):
  """x_0 from diffusers' loop: set_timesteps (unless num_steps is None), then step per timestep."""
  if num_steps is not None:
    scheduler.set_timesteps(num_steps)
  x, timesteps = torch.from_numpy(x_T), scheduler.timesteps
  for i, t in enumerate(timesteps):
    out = torch_model(x, t, COND)
    if guided:
      out_uncond = torch_model(x, t, UNCOND)
      out = out_uncond + GUIDANCE * (out - out_uncond)
    x = scheduler.step(out, t, x, **(step_kwargs(i) if step_kwargs else {})).prev_sample
    if inpaint is not None:
      mask, x0_known = (torch.from_numpy(a) for a in inpaint)
      known = x0_known if i == len(timesteps) - 1 else scheduler.add_noise(x0_known, torch.from_numpy(x_T),
                                                                            timesteps[i + 1:i + 2])
      x = mask * known + (1 - mask) * x
  return x.numpy().astype(np.float64)


def run_ours(sampler: str, schedule_name: str, x_T, rng, guided: bool, **options):
  cond = {"y": jnp.asarray(COND)}
  extra = dict(uncond={"y": jnp.asarray(UNCOND)}, guidance_scale=GUIDANCE) if guided else {}
  run = jax.jit(lambda x: SAMPLERS[sampler](jax_model, our_schedule(schedule_name), x, rng, cond=cond,
                                            **extra, **options))
  return np.asarray(run(jnp.asarray(x_T)))


MAX_ERRORS: dict[str, float] = {}


def check(sampler, ours, ref):
  error = relative_error(ours, ref)
  MAX_ERRORS[sampler] = max(MAX_ERRORS.get(sampler, 0.0), error)
  assert np.all(np.isfinite(ours))
  assert error <= RTOL, f"{sampler}: relative error {error:.2e}"


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
  yield
  print("\nmax relative error per sampler:", {k: f"{v:.1e}" for k, v in sorted(MAX_ERRORS.items())})


def inputs(seed: int):
  x_T = np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)
  return x_T, jax.random.key(seed)


# ---------------------------------------------------------------- DDPM

@pytest.mark.parametrize("num_steps, schedule, prediction_type, spacing, steps_offset, clip, guided", [
    (None, "linear", "epsilon", "leading", 0, 1.0, False),            # all 1000 steps, no set_timesteps
    (50, "scaled_linear", "v_prediction", "leading", 1, None, True),
    (7, "squaredcos_cap_v2", "sample", "trailing", 0, 1.5, False),
    (7, "scaled_linear", "epsilon", "linspace", 0, None, True),
])
def test_ddpm_matches_diffusers(num_steps, schedule, prediction_type, spacing, steps_offset, clip, guided,
                               monkeypatch):
  x_T, rng = inputs(1)
  noises = step_noises(rng, num_steps or 1000)
  # DDPMScheduler.step draws its noise itself: hand it ours, step by step (step_kwargs runs first).
  current = {}
  monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: current["z"])
  set_noise = lambda i: current.update(z=torch.from_numpy(noises[i])) or {}
  scheduler = diffusers.DDPMScheduler(**SCHEDULES[schedule], prediction_type=prediction_type,
                                      timestep_spacing=spacing, steps_offset=steps_offset,
                                      clip_sample=clip is not None, clip_sample_range=clip or 1.0)
  ref = run_diffusers(scheduler, x_T, num_steps, guided, step_kwargs=set_noise)
  ours = run_ours("ddpm", schedule, x_T, rng, guided, num_steps=num_steps, prediction_type=prediction_type,
                  spacing=spacing, steps_offset=steps_offset, clip_x0=clip)
  check("ddpm", ours, ref)


# ---------------------------------------------------------------- DDIM

DDIM_CASES = [(spacing, num_steps, eta) for spacing in ("leading", "trailing", "linspace")
              for num_steps in (50, 7) for eta in (0.0, 1.0)]


@pytest.mark.parametrize("case", range(len(DDIM_CASES)))
def test_ddim_matches_diffusers(case):
  spacing, num_steps, eta = DDIM_CASES[case]
  # Vary the other options across cases (one compile each): prediction type, CFG, alpha-one, clipping.
  prediction_type = ("epsilon", "v_prediction", "sample")[case % 3]
  guided, set_alpha_to_one, clip = case % 2 == 0, case % 4 < 2, (None, 1.0)[case % 5 == 0]
  steps_offset = 1 if spacing == "leading" else 0
  x_T, rng = inputs(2 + case)
  scheduler = diffusers.DDIMScheduler(**SCHEDULES["scaled_linear"], prediction_type=prediction_type,
                                      timestep_spacing=spacing, steps_offset=steps_offset,
                                      set_alpha_to_one=set_alpha_to_one, clip_sample=clip is not None)
  noises = step_noises(rng, num_steps)
  ref = run_diffusers(scheduler, x_T, num_steps, guided,
                      step_kwargs=lambda i: dict(eta=eta, variance_noise=torch.from_numpy(noises[i])))
  ours = run_ours("ddim", "scaled_linear", x_T, rng, guided, num_steps=num_steps, eta=eta,
                  prediction_type=prediction_type, spacing=spacing, steps_offset=steps_offset,
                  set_alpha_to_one=set_alpha_to_one, clip_x0=clip)
  check("ddim", ours, ref)


# ---------------------------------------------------------------- zero terminal SNR

def test_zero_terminal_snr_schedule_matches_diffusers():
  """Not bit for bit: torch's float32 sqrt (SLEEF, 0.5001 ulp) rounds ~18% of these values the other way."""
  ours = np.asarray(NoiseSchedule.create("scaled_linear", 1000, 0.00085, 0.012,
                                         rescale_zero_terminal_snr=True).alphas_cumprod)
  reference = diffusers.DDIMScheduler(**SCHEDULES["scaled_linear"], rescale_betas_zero_snr=True).alphas_cumprod.numpy()
  assert relative_error(ours, reference) <= 1e-6 and np.allclose(ours, reference, rtol=1e-5, atol=1e-9)
  assert ours[-1] == reference[-1] == 0.0 and ours[0] == reference[0]


@pytest.mark.parametrize("scheduler_class, sampler, spacing", [
    ("DDIMScheduler", "ddim", "trailing"), ("DDPMScheduler", "ddpm", "trailing"),
    ("DPMSolverMultistepScheduler", "dpm_solver_pp", "trailing")])
def test_zero_terminal_snr_samplers_match_diffusers(scheduler_class, sampler, spacing, monkeypatch):
  """v-prediction from alpha_bar_T = 0 (pure noise): the schedule zero-terminal-SNR fine-tunes sample with."""
  config = {"_class_name": scheduler_class, **SCHEDULES["scaled_linear"], "prediction_type": "v_prediction",
            "timestep_spacing": spacing, "rescale_betas_zero_snr": True, "clip_sample": False}
  schedule, name, options = from_diffusers_scheduler(config)
  assert name == sampler and schedule_config_from_diffusers(config)["rescale_zero_terminal_snr"]
  reference = getattr(diffusers, scheduler_class).from_config(config)
  x_T, rng = inputs(60)
  noises = step_noises(rng, 8)
  current = {}
  monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *args, **kwargs: current["z"])
  step_kwargs = {"DDIMScheduler": lambda i: dict(eta=0.0),
                 "DDPMScheduler": lambda i: current.update(z=torch.from_numpy(noises[i])) or {},
                 "DPMSolverMultistepScheduler": None}[scheduler_class]
  ref = run_diffusers(reference, x_T, 8, guided=True, step_kwargs=step_kwargs)
  ours = np.asarray(jax.jit(lambda x: SAMPLERS[sampler](jax_model, schedule, x, rng, num_steps=8,
                                                        cond={"y": jnp.asarray(COND)},
                                                        uncond={"y": jnp.asarray(UNCOND)},
                                                        guidance_scale=GUIDANCE, **options))(jnp.asarray(x_T)))
  check(sampler, ours, ref)
  assert to_diffusers_scheduler(schedule_config_from_diffusers(config), name, options)["rescale_betas_zero_snr"]


# ---------------------------------------------------------------- PLMS

@pytest.mark.parametrize("num_steps, spacing, steps_offset, prediction_type, set_alpha_to_one, guided", [
    (50, "leading", 1, "epsilon", False, True),                        # Stable Diffusion 1.x's default
    (1, "leading", 1, "epsilon", False, False),
    (2, "leading", 0, "v_prediction", True, False),
    (5, "leading", 1, "epsilon", False, False),
    (7, "linspace", 0, "v_prediction", False, True),
    (7, "trailing", 0, "epsilon", True, False),
])
def test_plms_matches_diffusers(num_steps, spacing, steps_offset, prediction_type, set_alpha_to_one, guided):
  x_T, rng = inputs(20 + num_steps)
  scheduler = diffusers.PNDMScheduler(**SCHEDULES["scaled_linear"], skip_prk_steps=True,
                                      prediction_type=prediction_type, timestep_spacing=spacing,
                                      steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
  ref = run_diffusers(scheduler, x_T, num_steps, guided)
  ours = run_ours("plms", "scaled_linear", x_T, rng, guided, num_steps=num_steps, prediction_type=prediction_type,
                  spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
  check("plms", ours, ref)


# ---------------------------------------------------------------- DPM-Solver++

@pytest.mark.parametrize("num_steps, spacing, prediction_type, final_sigmas_type, lower_order_final, guided", [
    (20, "linspace", "epsilon", "zero", True, False),
    (10, "linspace", "v_prediction", "zero", True, True),
    (10, "linspace", "epsilon", "sigma_min", True, False),
    (10, "linspace", "sample", "sigma_min", False, False),
    (8, "leading", "epsilon", "zero", True, True),
    (7, "trailing", "v_prediction", "zero", False, False),
])
def test_dpm_solver_pp_matches_diffusers(num_steps, spacing, prediction_type, final_sigmas_type,
                                         lower_order_final, guided):
  x_T, rng = inputs(40 + num_steps)
  scheduler = diffusers.DPMSolverMultistepScheduler(
      **SCHEDULES["scaled_linear"], algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
      prediction_type=prediction_type, timestep_spacing=spacing, final_sigmas_type=final_sigmas_type,
      lower_order_final=lower_order_final)
  ref = run_diffusers(scheduler, x_T, num_steps, guided)
  ours = run_ours("dpm_solver_pp", "scaled_linear", x_T, rng, guided, num_steps=num_steps,
                  prediction_type=prediction_type, spacing=spacing, final_sigmas_type=final_sigmas_type,
                  lower_order_final=lower_order_final)
  check("dpm_solver_pp", ours, ref)


# ---------------------------------------------------------------- inpainting

@pytest.mark.parametrize("sampler, scheduler", [
    ("ddim", lambda: diffusers.DDIMScheduler(**SCHEDULES["scaled_linear"], clip_sample=False)),
    ("dpm_solver_pp", lambda: diffusers.DPMSolverMultistepScheduler(**SCHEDULES["scaled_linear"])),
])
def test_inpainting_keeps_the_known_region_and_samples_the_rest(sampler, scheduler):
  x_T, rng = inputs(60)
  data = np.random.default_rng(61)
  x0_known = data.normal(size=SHAPE).astype(np.float32)
  mask = (data.uniform(size=SHAPE[:-1] + (1,)) < 0.5).astype(np.float32)          # [B, H, W, 1], 1 = keep
  # Reference: diffusers' inpainting-pipeline loop (known region = add_noise(x0_known, x_T, next t)).
  ref = run_diffusers(scheduler(), x_T, 10, guided=True,
                      inpaint=(mask, x0_known))
  ours = run_ours(sampler, "scaled_linear", x_T, rng, True, num_steps=10, mask=jnp.asarray(mask),
                  x0_known=jnp.asarray(x0_known))
  check(f"{sampler} inpainting", ours, ref)
  keep = np.broadcast_to(mask, SHAPE) == 1
  np.testing.assert_array_equal(ours[keep], x0_known[keep])
  # The unknown region is not x0_known, and depends on the known one (the model sees both).
  plain = run_ours(sampler, "scaled_linear", x_T, rng, True, num_steps=10)
  assert np.abs(ours - x0_known)[~keep].min() > 1e-4
  assert np.abs(ours - plain)[~keep].mean() > 1e-3


def test_inpainting_inputs_are_checked():
  x_T, rng = inputs(62)
  sample = lambda **kw: SAMPLERS["ddim"](jax_model, our_schedule("linear"), jnp.asarray(x_T), rng, num_steps=2,
                                         cond={"y": jnp.asarray(COND)}, **kw)
  with pytest.raises(ValueError, match="both `mask` and `x0_known`"):
    sample(mask=jnp.ones(SHAPE))
  with pytest.raises(ValueError, match=r"x0_known has shape \(2, 4, 4\)"):
    sample(mask=jnp.ones(SHAPE), x0_known=jnp.ones(SHAPE[:-1]))
  with pytest.raises(ValueError, match=r"mask of shape \(2, 4, 3, 1\) does not broadcast"):
    sample(mask=jnp.ones((2, 4, 3, 1)), x0_known=jnp.ones(SHAPE))


# ---------------------------------------------------------------- schedules and scheduler configs

@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("num_train_timesteps", [1000, 37])
def test_betas_and_alpha_bar_are_bit_identical_to_diffusers(name, num_train_timesteps):
  betas = SCHEDULES[name]
  reference = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, **betas)
  ours_name = "cosine" if name == "squaredcos_cap_v2" else name
  args = (ours_name, num_train_timesteps, betas.get("beta_start", 1e-4), betas.get("beta_end", 2e-2))
  np.testing.assert_array_equal(make_betas(*args), reference.betas.numpy())
  np.testing.assert_array_equal(NoiseSchedule.create(*args).alphas_cumprod, reference.alphas_cumprod.numpy())


# Real Stable Diffusion scheduler_config.json files (SD 1.5: PNDM default and the common DDIM swap;
# SD 2.x 768: v-prediction DDIM), plus the DPM-Solver++ config diffusers' docs recommend.
SD15_PNDM = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
             "clip_sample": False}
SD15_DDIM = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None}
SD2_DDIM = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
            "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SD_DPM = {"_class_name": "DPMSolverMultistepScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "beta_start": 0.00085, "num_train_timesteps": 1000, "algorithm_type": "dpmsolver++", "solver_order": 2,
          "steps_offset": 1, "use_karras_sigmas": False, "lower_order_final": True}
REAL_CONFIGS = {"sd15_pndm": SD15_PNDM, "sd15_ddim": SD15_DDIM, "sd2_ddim": SD2_DDIM, "sd_dpm": SD_DPM}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_configs_round_trip_and_sample_like_diffusers(name):
  config = REAL_CONFIGS[name]
  schedule, sampler, options = from_diffusers_scheduler(config)
  scheduler_class = getattr(diffusers, config["_class_name"])
  reference = scheduler_class.from_config(config)
  np.testing.assert_array_equal(schedule.alphas_cumprod, reference.alphas_cumprod.numpy())
  exported = to_diffusers_scheduler(schedule_config_from_diffusers(config), sampler, options)
  again = scheduler_class.from_config(exported)
  parameters = set(inspect.signature(scheduler_class.__init__).parameters) - {"self"}
  assert set(exported) - {"_class_name"} <= parameters                 # only keys the class reads
  for key in parameters:                                               # and all of them unchanged
    assert again.config[key] == reference.config[key], key
  _, sampler_again, options_again = from_diffusers_scheduler(exported)
  assert (sampler_again, options_again) == (sampler, options)
  # The imported sampler reproduces diffusers' scheduler built from the same file.
  x_T, rng = inputs(70)
  ref = run_diffusers(reference, x_T, 6, guided=True)
  ours = np.asarray(jax.jit(lambda x: SAMPLERS[sampler](jax_model, schedule, x, rng, num_steps=6,
                                                        cond={"y": jnp.asarray(COND)},
                                                        uncond={"y": jnp.asarray(UNCOND)},
                                                        guidance_scale=GUIDANCE, **options))(jnp.asarray(x_T)))
  check(sampler, ours, ref)


@pytest.mark.parametrize("change, message", [
    ({"_class_name": "EulerDiscreteScheduler"},
     r"'EulerDiscreteScheduler'; supported: \['DDIMScheduler', 'DDPMScheduler', 'DPMSolverMultistepScheduler', "
     r"'PNDMScheduler'\]"),
    ({"trained_betas": [0.1, 0.2]}, r"trained_betas=\[0.1, 0.2\] is not supported"),
    ({"thresholding": True}, "thresholding=True is not supported"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid' is not supported; supported:"),
    ({"timestep_spacing": "karras"}, "timestep_spacing='karras' is not supported"),
    ({"prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
])
def test_unsupported_ddim_configs_raise_naming_the_key(change, message):
  with pytest.raises(ValueError, match=message):
    from_diffusers_scheduler({**SD15_DDIM, **change})


@pytest.mark.parametrize("config, message", [
    ({**SD15_PNDM, "skip_prk_steps": False}, "PNDMScheduler: skip_prk_steps=False"),
    ({**SD15_PNDM, "prediction_type": "sample"}, "PNDMScheduler: prediction_type='sample'"),
    ({**SD_DPM, "use_karras_sigmas": True}, "use_karras_sigmas=True"),
    ({**SD_DPM, "algorithm_type": "sde-dpmsolver++"}, "algorithm_type='sde-dpmsolver\\+\\+'"),
    ({**SD_DPM, "solver_order": 3}, r"solver_order=3 is not supported; supported: \[1, 2\]"),
    ({"_class_name": "DDPMScheduler", "variance_type": "learned_range"}, "variance_type='learned_range'"),
])
def test_unsupported_options_of_other_classes_raise(config, message):
  with pytest.raises(ValueError, match=message):
    from_diffusers_scheduler(config)


def test_export_rejects_unknown_samplers_and_options():
  schedule_config = schedule_config_from_diffusers(SD15_DDIM)
  with pytest.raises(ValueError, match="sampler 'euler'"):
    to_diffusers_scheduler(schedule_config, "euler", {})
  with pytest.raises(ValueError, match=r"\['clip_x0'\] have no PNDMScheduler equivalent"):
    to_diffusers_scheduler(schedule_config, "plms", {"clip_x0": 1.0})
