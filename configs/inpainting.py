"""Inpainting (the paper's LDM inpainting, Stable-Diffusion-inpainting's 9-channel UNet layout) on coloured shapes:
the UNet reads x_t + the mask + the masked image's latent; samples take the known pixels from the input
(paste_known). Most training masks (object_prob 0.8) hide one side of one object's box (Imagen Editor's object
masking), the rest are random strokes and boxes, full or empty: completing shapes, not filling background, is what
the LDM then learns (0.49 -> 0.77 objects right in 5,000 LDM steps, 0.81 in 8,000). The LDM predicts v on a
zero-terminal-SNR schedule with trailing DDIM steps (as configs/super_resolution.py), which nearly doubled the
filled objects' shape accuracy; the autoencoder trains 1,000 steps, since its reconstruction pasted into the hole
bounds what any sample can reach (README, "Tasks").

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
  config.ldm.loop.train_steps = 8_000                  # with object masks: 5,000 steps 0.77, 8,000 0.81
  config.ldm.diffusion.prediction_type = "v_prediction"
  config.ldm.diffusion.rescale_zero_terminal_snr = True
  config.sample.spacing = "trailing"
  config.ldm.conditioning.kinds = ("inpaint",)
  config.ldm.conditioning.inpaint.paste_known = True
  # 80 % of the masks over part of an object (the data's boxes), 10 % full, 5 % empty, 5 % boxes and strokes.
  config.ldm.conditioning.inpaint.masks.object_prob = 0.8
  config.evaluate.evals = dict(inpainting=evaluator("inpainting"))
  return config
