"""4x super-resolution (LDM-SR) on real photographs: 32 x 32 crops <-> 8 x 8 x 4 latents of an f=4 KL
autoencoder; the 8 x 8 bicubic-downsampled image is concatenated to x_t. Validation crops come from photos never
seen in training (a cat, flowers).

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
  config.data.photo_crops.examples = 4_000
  config.ldm.conditioning.kinds = ("low_res",)
  config.ldm.conditioning.low_res.noise_std = 0.02
  config.evaluate.evals = dict(super_resolution=evaluator("super_resolution"))
  return config
