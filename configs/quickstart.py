"""The quickstart: digits -> autoencoder (f=2) -> class-conditional LDM -> CFG samples, on 2 CPU cores.

  python -m latent_diffusion.train --config=configs/quickstart.py --workdir=runs/quickstart
(or `bash launch/quickstart.sh`, which installs the requirements first).
"""

from configs import base


def get_config():
  config = base.get_config()

  # 16x16 grayscale digits, batch 64.
  config.data.image_size = 16
  config.data.batch_size = 64

  ae = config.autoencoder
  # f = 2: 16x16x1 images <-> 8x8x4 latents.
  ae.model.ch = 32
  ae.model.ch_mult = (1, 2)
  ae.model.num_res_blocks = 1
  ae.model.groups = 8
  ae.optim.lr = 1e-3
  ae.optim.warmup_steps = 100
  ae.loop.train_steps = 1500
  ae.loop.eval_every_steps = 500
  ae.loop.ema_decay = 0.99

  ldm = config.ldm
  ldm.model.model_channels = 64
  ldm.model.channel_mult = (1, 2)
  ldm.model.num_res_blocks = 2
  # Attention at 4x4 (downsample rate 2 of the 8x8 latents).
  ldm.model.attention_resolutions = (2,)
  ldm.model.num_head_channels = 32
  # 10 digits + the null label for classifier-free guidance.
  ldm.model.num_classes = config.data.num_classes + 1
  ldm.model.groups = 16
  ldm.optim.lr = 5e-4
  ldm.optim.warmup_steps = 200
  ldm.loop.train_steps = 4000
  ldm.loop.ema_decay = 0.995

  config.sample.guidance_scale = 3.0
  config.sample.num_steps = 50
  return config
