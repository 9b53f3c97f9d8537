"""Layout-to-image on coloured shapes: boxes with classes (3 shapes x 4 colours) as tokens (class, quantized
x0, y0, x1, y1), encoded by a small transformer trained with the UNet, through cross-attention; the boxes also
reach the UNet as a map concatenated to x_t (`layout.box_map`), without which, within this budget, the model put
the right colours in the boxes but no shapes. As inpainting and super-resolution, the LDM predicts v on a
zero-terminal-SNR schedule with trailing DDIM steps, and the autoencoder trains 2,000 steps: its reconstructions
bound the shapes any sample can show (README, "Tasks").

  python -m latent_diffusion.cli.train --config=configs/layout.py --workdir=runs/layout

Evaluator 'layout' (latent_diffusion.evaluation.layout): for every box of held-out layouts, is the requested shape
in the requested colour there (colour and shape classifiers fit on real images)?
"""

from latent_diffusion.configs import tasks_base
from latent_diffusion.configs.base import evaluator


def get_config():
  config = tasks_base.get_config()
  # 30.6 dB after 2,000 steps (28.1 after 1,000): 0.89 of the objects' shapes survive its reconstruction (0.74).
  config.autoencoder.loop.train_steps = 2_000
  config.autoencoder.loop.eval_every_steps = 2_000
  config.ldm.loop.train_steps = 5_000
  config.ldm.diffusion.prediction_type = "v_prediction"
  config.ldm.diffusion.rescale_zero_terminal_snr = True
  config.sample.spacing = "trailing"
  config.ldm.conditioning.kinds = ("layout",)
  config.ldm.conditioning.drop_prob = 0.1
  layout = config.ldm.conditioning.layout
  layout.max_objects = config.data.shapes.max_objects
  layout.bins = 32
  layout.width = 128
  layout.layers = 2
  layout.heads = 4
  layout.box_map = True
  config.ldm.model.attention_resolutions = (1, 2)      # cross-attention to the layout at 8x8 and 4x4
  config.sample.guidance_scale = 2.0
  config.evaluate.evals = dict(layout=evaluator("layout"))
  return config
