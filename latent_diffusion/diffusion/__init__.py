"""Diffusion math: noise schedules, the forward process, timestep spacings and samplers (no model code)."""

from latent_diffusion.diffusion.multistep import dpm_solver_pp_sample, plms_sample
from latent_diffusion.diffusion.samplers import SAMPLERS, ddim_sample, ddpm_sample, sampler_options
from latent_diffusion.diffusion.schedule import (NoiseSchedule, make_betas, predict_x0_and_eps, q_sample,
                                                 training_target)
from latent_diffusion.diffusion.stepping import guided
from latent_diffusion.diffusion.timesteps import dpm_solver_timesteps, sampling_timesteps
