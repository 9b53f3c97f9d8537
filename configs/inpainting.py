"""Inpainting (the paper's LDM inpainting, Stable-Diffusion-inpainting's 9-channel UNet layout) on coloured shapes:
the UNet reads x_t + the mask + the masked image's latent; masks are random strokes and boxes, some full or empty;
samples take the known pixels from the input (paste_known).

  python -m latent_diffusion.cli.train --config=configs/inpainting.py --workdir=runs/inpainting

Evaluator 'inpainting' (latent_diffusion.evaluation.inpainting): half of one object of each held-out image is
masked; the filled image is judged for that object's shape and colour, and the known region's error is set against
the autoencoder's own reconstruction error there.
"""

from latent_diffusion.configs import tasks_base
from latent_diffusion.configs.base import evaluator


def get_config():
  config = tasks_base.get_config()
  config.ldm.loop.train_steps = 10_000
  config.ldm.conditioning.kinds = ("inpaint",)
  config.ldm.conditioning.inpaint.paste_known = True
  config.evaluate.evals = dict(inpainting=evaluator("inpainting"))
  return config
