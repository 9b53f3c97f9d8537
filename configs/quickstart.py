"""The quickstart: digits -> autoencoder (f=4) -> class-conditional LDM -> CFG samples, on 2 CPU cores.

  python -m latent_diffusion.cli.train --config=configs/quickstart.py --workdir=runs/quickstart
(or `bash launch/quickstart.sh`, which installs the requirements first).
"""

from latent_diffusion.configs import base


def get_config():
  config = base.get_config()

  # 16x16 grayscale digits, batch 64.
  config.data.image_size = 16
  config.data.batch_size = 64

  ae = config.autoencoder
  # f = 4: 16x16x1 images <-> 4x4x4 latents (as many numbers as the original 8x8 digit).
  ae.model.ch = 16
  ae.model.ch_mult = (1, 2, 2)
  ae.model.num_res_blocks = 1
  ae.model.groups = 8
  ae.optim.lr = 2e-3
  # L1 + KL only (no GAN): AdamW's usual moments rather than the paper's GAN-stable (0.5, 0.9).
  ae.optim.b1, ae.optim.b2 = 0.9, 0.999
  ae.optim.warmup_steps = 100
  ae.loop.train_steps = 1000
  ae.loop.eval_every_steps = 500
  ae.loop.ema_decay = 0.99

  ldm = config.ldm
  # One resolution level: at 4x4 the 3x3 convs already see the whole latent, and 2x2 convs
  # run at a tenth of the CPU's conv throughput.
  ldm.model.model_channels = 64
  ldm.model.channel_mult = (1,)
  ldm.model.num_res_blocks = 2
  ldm.model.attention_resolutions = (1,)
  ldm.model.num_head_channels = 32
  ldm.model.groups = 16
  ldm.optim.lr = 1e-3
  ldm.optim.warmup_steps = 200
  ldm.loop.train_steps = 2500
  ldm.loop.ema_decay = 0.995

  config.sample.guidance_scale = 3.0
  config.sample.num_steps = 50
  return config
