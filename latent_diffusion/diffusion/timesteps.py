"""The timesteps a sampler visits, computed exactly as diffusers' schedulers compute them.

`timestep_spacing` (diffusers' name) picks num_steps of the T training timesteps:
  leading:  0, r, 2r, ... with r = T // num_steps, plus steps_offset (DDIM paper / LDM; SD uses offset 1);
  trailing: round(T - k T / num_steps) - 1, so the first step is always t = T - 1 (Lin et al. 2024);
  linspace: round(linspace(0, T - 1, num_steps)), both ends included.
DPM-Solver takes num_steps + 1 points of 'leading' / 'linspace' and drops t = 0 (its last step goes
to sigma = 0 instead); its 'trailing' is the usual one.
"""

import numpy as np


def _leading(num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
  return np.arange(num_steps) * (num_train_timesteps // num_steps) + steps_offset


def _trailing(num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
  del steps_offset  # diffusers applies it to 'leading' only
  return np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps))[::-1] - 1


def _linspace(num_train_timesteps: int, num_steps: int, steps_offset: int) -> np.ndarray:
  del steps_offset
  return np.linspace(0, num_train_timesteps - 1, num_steps).round()


# Spacing name -> fn(T, num_steps, steps_offset) -> ascending timesteps [num_steps].
SPACINGS = {"leading": _leading, "trailing": _trailing, "linspace": _linspace}


def sampling_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading",
                       steps_offset: int = 0) -> np.ndarray:
  """The `num_steps` timesteps of DDPM / DDIM / PNDM, descending, int64 [num_steps]."""
  if spacing not in SPACINGS:
    raise ValueError(f"Unknown timestep spacing {spacing!r}; known: {sorted(SPACINGS)}.")
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_timesteps}].")
  timesteps = SPACINGS[spacing](num_train_timesteps, num_steps, steps_offset).astype(np.int64)[::-1].copy()
  if len(timesteps) != num_steps:
    # np.arange over a float stride sometimes yields one extra point (t = -1): diffusers would index
    # alphas_cumprod[-1], so there is no sound schedule to match.
    raise ValueError(f"'{spacing}' spacing gives {len(timesteps)} timesteps for num_steps={num_steps} "
                     f"(float rounding in diffusers' formula); choose another num_steps.")
  if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
    raise ValueError(f"steps_offset={steps_offset} moves timesteps {timesteps} outside [0, {num_train_timesteps}).")
  return timesteps


def dpm_solver_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "linspace",
                         steps_offset: int = 0) -> np.ndarray:
  """DPMSolverMultistepScheduler's `num_steps` timesteps, descending, int64 [num_steps]."""
  if spacing == "trailing":
    return sampling_timesteps(num_train_timesteps, num_steps, spacing, steps_offset)
  if not 1 <= num_steps < num_train_timesteps:
    raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_timesteps - 1}] for DPM-Solver.")
  return sampling_timesteps(num_train_timesteps, num_steps + 1, spacing, steps_offset)[:-1]


def previous_timesteps(timesteps: np.ndarray, num_train_timesteps: int, rule: str) -> np.ndarray:
  """The timestep each step moves to, int64 [num_steps]; negative = past t = 0 (the final alpha_bar).

  rule 'next': the next visited timestep (DDPM, DPM-Solver; -1 after the last step).
  rule 'stride': t - T // num_steps (DDIM, PNDM), which differs from 'next' for 'trailing' and
  'linspace' spacings, where the step lands between visited timesteps.
  """
  if rule == "next":
    return np.append(timesteps[1:], -1)
  if rule == "stride":
    return timesteps - num_train_timesteps // len(timesteps)
  raise ValueError(f"Unknown previous-timestep rule {rule!r}; known: ['next', 'stride'].")
