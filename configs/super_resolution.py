"""4x super-resolution (LDM-SR) on real photographs: 32 x 32 crops <-> 8 x 8 x 4 latents of an f=4 KL
autoencoder; the 8 x 8 bicubic-downsampled image is concatenated to x_t. Validation crops come from photos never
seen in training (a cat, flowers).

Residual mode (SRDiff / ResShift): the autoencoder and the LDM model what bicubic upsampling misses, and a sample is
bicubic_up(low_res) + the decoded residual, back-projected once onto its input. The LDM predicts v on a zero-terminal-
SNR schedule, so that few trailing DDIM steps start from pure noise with a well-posed first estimate; 3 steps trade
texture for fidelity (README, "Tasks": PSNR / SSIM by step count).

  python -m latent_diffusion.cli.train --config=configs/super_resolution.py --workdir=runs/super_resolution

Evaluator 'super_resolution' (latent_diffusion.evaluation.super_resolution): PSNR / SSIM of the super-resolved
held-out crops against the originals, beside bicubic upsampling and the autoencoder's own reconstruction, at 32 x 32
and 64 x 64.
"""

from latent_diffusion.configs import tasks_base
from latent_diffusion.configs.base import evaluator


def get_config():
  config = tasks_base.get_config()
  config.data.name = "photo_crops"
  # 8,000 LDM steps x batch 16: every crop seen once (a crop reused 32 times, 4,000 of them, overfits the 8 training
  # photos: 32 px PSNR at bicubic's on held-out photos instead of 0.5 dB above; README "Tasks").
  config.data.photo_crops.examples = 128_000
  config.ldm.conditioning.kinds = ("low_res",)
  config.ldm.conditioning.low_res.residual = True
  config.ldm.conditioning.low_res.back_projection = 1
  config.ldm.diffusion.prediction_type = "v_prediction"
  config.ldm.diffusion.rescale_zero_terminal_snr = True
  config.ldm.loop.train_steps = 8_000
  config.sample.spacing = "trailing"
  config.sample.num_steps = 3
  config.evaluate.evals = dict(super_resolution=evaluator("super_resolution"))
  return config
