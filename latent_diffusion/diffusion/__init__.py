"""Diffusion math: noise schedules, the forward process and samplers (no model code)."""

from latent_diffusion.diffusion.samplers import SAMPLERS, ddim_sample, ddpm_sample, guided, sampling_timesteps
from latent_diffusion.diffusion.schedule import (NoiseSchedule, make_betas, predict_x0_and_eps, q_sample,
                                                 training_target)
