"""diffusers scheduler configs (scheduler_config.json) <-> our NoiseSchedule, sampler name and options.

Supported classes and the sampler each becomes: DDPMScheduler -> 'ddpm', DDIMScheduler -> 'ddim',
PNDMScheduler (skip_prk_steps=True) -> 'plms', DPMSolverMultistepScheduler ('dpmsolver++') ->
'dpm_solver_pp'; rescale_betas_zero_snr (zero terminal SNR) is honoured where diffusers reads it.
A key we cannot honour (trained_betas, thresholding, Karras sigmas, ...) raises
ValueError naming it; keys the class does not read or that do not change the math
(_diffusers_version, dynamic_thresholding_ratio, PNDM's clip_sample, ...) are ignored, as diffusers does.
Missing keys take diffusers' defaults for that class.
"""

import dataclasses

from latent_diffusion.diffusion import NoiseSchedule
from latent_diffusion.diffusion.schedule import PREDICTION_TYPES
from latent_diffusion.diffusion.timesteps import SPACINGS

# diffusers beta_schedule -> ours ('squaredcos_cap_v2' is Nichol & Dhariwal's cosine, capped at 0.999).
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_SCHEDULE_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                      "rescale_betas_zero_snr": False}
# Keys whose other values change the math in ways we do not implement: of every class, and of all but PNDM.
_COMMON_REQUIRED = {"trained_betas": None}
_PLAIN_BETAS = {"thresholding": False}
# Classes that read rescale_betas_zero_snr (PNDMScheduler has no such option and ignores the key).
_RESCALING = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")


@dataclasses.dataclass(frozen=True)
class _Scheduler:
  sampler: str
  renamed: dict[str, str]       # diffusers key -> our sampler option, value unchanged
  defaults: dict                # diffusers' defaults of those keys (and of clip_sample / clip_sample_range)
  required: dict                # keys supported at this one value only
  allowed: dict = dataclasses.field(default_factory=dict)   # our option -> allowed values


_RENAMED = {"prediction_type": "prediction_type", "timestep_spacing": "spacing", "steps_offset": "steps_offset"}
_ALLOWED = {"prediction_type": PREDICTION_TYPES, "spacing": tuple(SPACINGS)}
_CLASSES = {
    "DDPMScheduler": _Scheduler(
        "ddpm", _RENAMED,
        dict(prediction_type="epsilon", timestep_spacing="leading", steps_offset=0, clip_sample=True,
             clip_sample_range=1.0),
        dict(variance_type="fixed_small", **_PLAIN_BETAS)),
    "DDIMScheduler": _Scheduler(
        "ddim", {**_RENAMED, "set_alpha_to_one": "set_alpha_to_one"},
        dict(prediction_type="epsilon", timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True,
             clip_sample=True, clip_sample_range=1.0),
        _PLAIN_BETAS),
    "PNDMScheduler": _Scheduler(
        "plms", {**_RENAMED, "set_alpha_to_one": "set_alpha_to_one"},
        dict(prediction_type="epsilon", timestep_spacing="leading", steps_offset=0, set_alpha_to_one=False),
        dict(skip_prk_steps=True), {"prediction_type": ("epsilon", "v_prediction")}),
    "DPMSolverMultistepScheduler": _Scheduler(
        "dpm_solver_pp",
        {**_RENAMED, "solver_order": "solver_order", "lower_order_final": "lower_order_final",
         "final_sigmas_type": "final_sigmas_type"},
        dict(prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0, solver_order=2,
             lower_order_final=True, final_sigmas_type="zero"),
        dict(**_PLAIN_BETAS, algorithm_type="dpmsolver++", solver_type="midpoint", euler_at_final=False,
             use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
             use_flow_sigmas=False, use_dynamic_shifting=False, variance_type=None, lambda_min_clipped=-float("inf")),
        {"solver_order": (1, 2), "final_sigmas_type": ("zero", "sigma_min")}),
}
_SAMPLERS = {spec.sampler: name for name, spec in _CLASSES.items()}


def _class_spec(class_name) -> _Scheduler:
  if class_name not in _CLASSES:
    raise ValueError(f"Unsupported scheduler class {class_name!r}; supported: {sorted(_CLASSES)}.")
  return _CLASSES[class_name]


def schedule_config_from_diffusers(config: dict) -> dict:
  """NoiseSchedule.create keyword arguments {name, num_timesteps, beta_start, beta_end,
  rescale_zero_terminal_snr} of a scheduler config."""
  merged = {**_SCHEDULE_DEFAULTS, **config}
  if merged["beta_schedule"] not in _BETA_SCHEDULES:
    raise ValueError(f"beta_schedule={merged['beta_schedule']!r} is not supported; supported: "
                     f"{sorted(_BETA_SCHEDULES)}.")
  rescale = bool(merged["rescale_betas_zero_snr"]) and config.get("_class_name") in _RESCALING
  return dict(name=_BETA_SCHEDULES[merged["beta_schedule"]], num_timesteps=int(merged["num_train_timesteps"]),
              beta_start=float(merged["beta_start"]), beta_end=float(merged["beta_end"]),
              rescale_zero_terminal_snr=rescale)


def from_diffusers_scheduler(config: dict) -> tuple[NoiseSchedule, str, dict]:
  """(schedule, sampler name, sampler options) equivalent to a diffusers scheduler_config.json dict.

  The options are complete for that sampler (diffusers' defaults filled in) except the call-time
  ones: num_steps, eta, guidance_scale, cond / uncond, mask / x0_known.
  """
  spec = _class_spec(config.get("_class_name"))
  for key, value in {**_COMMON_REQUIRED, **spec.required}.items():
    if config.get(key, value) != value:
      raise ValueError(f"{config['_class_name']}: {key}={config[key]!r} is not supported (only {value!r}).")
  merged = {**spec.defaults, **config}
  options = {ours: merged[key] for key, ours in spec.renamed.items()}
  if "clip_sample" in spec.defaults:
    options["clip_x0"] = float(merged["clip_sample_range"]) if merged["clip_sample"] else None
  for option, allowed in {**_ALLOWED, **spec.allowed}.items():
    if options[option] not in allowed:
      key = {ours: key for key, ours in spec.renamed.items()}[option]
      raise ValueError(f"{config['_class_name']}: {key}={options[option]!r} is not supported; supported: "
                       f"{list(allowed)}.")
  return NoiseSchedule.create(**schedule_config_from_diffusers(config)), spec.sampler, options


def to_diffusers_scheduler(schedule_config: dict, sampler: str, options: dict) -> dict:
  """The scheduler_config.json dict of (NoiseSchedule.create kwargs, sampler name, its options).

  Inverse of (schedule_config_from_diffusers, from_diffusers_scheduler): every key we read is
  written explicitly. Call-time options (num_steps, eta, guidance_scale) are not part of a config.
  """
  if sampler not in _SAMPLERS:
    raise ValueError(f"No diffusers scheduler for sampler {sampler!r}; supported: {sorted(_SAMPLERS)}.")
  class_name = _SAMPLERS[sampler]
  spec = _CLASSES[class_name]
  call_time = {"num_steps", "eta", "guidance_scale"}
  known = set(spec.renamed.values()) | ({"clip_x0"} if "clip_sample" in spec.defaults else set())
  unknown = set(options) - known - call_time
  if unknown:
    raise ValueError(f"Options {sorted(unknown)} have no {class_name} equivalent; known: {sorted(known)}.")
  beta_schedules = {ours: theirs for theirs, ours in _BETA_SCHEDULES.items()}
  config = {"_class_name": class_name, "num_train_timesteps": schedule_config["num_timesteps"],
            "beta_start": schedule_config["beta_start"], "beta_end": schedule_config["beta_end"],
            "beta_schedule": beta_schedules[schedule_config["name"]], **_COMMON_REQUIRED, **spec.required}
  rescale = bool(schedule_config.get("rescale_zero_terminal_snr", False))
  if class_name in _RESCALING:
    config["rescale_betas_zero_snr"] = rescale
  elif rescale:
    raise ValueError(f"{class_name} cannot express zero-terminal-SNR betas (rescale_betas_zero_snr); use ddim, "
                     f"ddpm or dpm_solver_pp.")
  defaults = {ours: spec.defaults[key] for key, ours in spec.renamed.items()}
  config.update({key: options.get(ours, defaults[ours]) for key, ours in spec.renamed.items()})
  if "clip_sample" in spec.defaults:
    clip_x0 = options.get("clip_x0")
    config.update(clip_sample=clip_x0 is not None, clip_sample_range=1.0 if clip_x0 is None else clip_x0)
  return config
