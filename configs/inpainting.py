"""Inpainting (the paper's LDM inpainting, Stable-Diffusion-inpainting's 9-channel UNet layout) on coloured shapes:
the UNet reads x_t + the mask + the masked image's latent; masks are random strokes and boxes, some full or empty;
samples take the known pixels from the input (paste_known). The LDM predicts v on a zero-terminal-SNR schedule with
trailing DDIM steps (as configs/super_resolution.py), which nearly doubled the filled objects' shape accuracy; the
autoencoder trains 1,000 steps, since its reconstruction pasted into the hole bounds what any sample can reach
(README, "Tasks").

  python -m latent_diffusion.cli.train --config=configs/inpainting.py --workdir=runs/inpainting

Evaluator 'inpainting' (latent_diffusion.evaluation.inpainting): half of one object of each held-out image is
masked; the filled image is judged for that object's shape and colour, and the known region's error is set against
the autoencoder's own reconstruction error there.
"""

from latent_diffusion.configs import tasks_base
from latent_diffusion.configs.base import evaluator


def get_config():
  config = tasks_base.get_config()
  config.autoencoder.loop.train_steps = 1_000
  config.autoencoder.loop.eval_every_steps = 1_000
  # The LDM trains on batches of 32 (the autoencoder keeps data.batch_size 16) at twice the tasks' learning rate:
  # 5,000 steps of 32 filled more objects right than 9,000 of 16 in the same time (README, "Tasks").
  config.ldm.loop.batch_size = 32
  config.ldm.optim.lr = 2e-3
  config.ldm.loop.train_steps = 5_000
  config.ldm.diffusion.prediction_type = "v_prediction"
  config.ldm.diffusion.rescale_zero_terminal_snr = True
  config.sample.spacing = "trailing"
  config.ldm.conditioning.kinds = ("inpaint",)
  config.ldm.conditioning.inpaint.paste_known = True
  config.evaluate.evals = dict(inpainting=evaluator("inpainting"))
  return config
