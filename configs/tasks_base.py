"""What the task configs share (configs/inpainting.py, semantic.py, layout.py, super_resolution.py): 32 x 32 RGB
images (coloured shapes, latent_diffusion.data.shapes, unless a task says otherwise) -> an f=4 KL autoencoder ->
an LDM on 8 x 8 x 4 latents. f = 4 runs about 4x the LDM steps per second of f = 2 here (what made semantic synthesis
follow its maps; f = 2 reconstructs the shapes more sharply: README, "Tasks"). Not a task by itself: each task picks its data,
conditioning and evaluation.

Sized so that each task (both stages and its judge) runs within about 15 minutes on one CPU core here (README,
"Tasks": measured wall times): small widths, batch 16, 4,000 training images, DDIM 25 steps at evaluation.
"""

from latent_diffusion.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "shapes"
  config.data.image_size = 32
  config.data.batch_size = 16
  config.data.val_examples = 500
  config.data.num_classes = 12          # object classes: 3 shapes x 4 colours (data.shapes.NUM_OBJECT_CLASSES)
  config.data.shapes.examples = 4_000

  ae = config.autoencoder
  # f = 4: 32x32x3 images <-> 8x8x4 latents.
  ae.model.in_channels = 3
  ae.model.ch = 16
  ae.model.ch_mult = (1, 2, 2)
  ae.model.num_res_blocks = 1
  ae.model.groups = 8
  ae.optim.lr = 2e-3
  ae.optim.warmup_steps = 100
  ae.loop.train_steps = 600
  ae.loop.eval_every_steps = 600
  ae.loop.ema_decay = 0.99

  ldm = config.ldm
  # Two levels (8x8, 4x4) with self-attention at 4x4.
  ldm.model.model_channels = 32
  ldm.model.channel_mult = (1, 2)
  ldm.model.num_res_blocks = 1
  ldm.model.attention_resolutions = (2,)
  ldm.model.num_head_channels = 32
  ldm.model.groups = 16
  ldm.conditioning.drop_prob = 0.0
  ldm.optim.lr = 1e-3
  ldm.optim.warmup_steps = 200
  ldm.loop.train_steps = 2000
  ldm.loop.ema_decay = 0.995

  config.sample.num_steps = 25
  config.sample.guidance_scale = 1.0
  config.sample.batch_size = 100
  # Each task config names its judge (config.evaluate.evals); none runs during training.
  config.evaluate.tasks.samples = 100
  config.evaluate.tasks.judge_examples = 600
  config.evaluate.during_training = ()
  return config
