"""A seconds-long run of every stage (tests and smoke checks); the quickstart with tiny sizes.

  python -m latent_diffusion.cli.train --config=configs/tiny.py --workdir=/tmp/tiny
"""

from latent_diffusion.configs import quickstart


def shrink(config, steps: int, every: int, warmup: int) -> None:
  """Tiny autoencoder and UNet; both stages train `steps` steps, log and checkpoint every `every` steps."""
  ae = config.autoencoder
  ae.model.ch = 8
  ae.model.groups = 4
  ae.loop.train_steps = steps
  ae.loop.log_every_steps = every
  ae.loop.eval_every_steps = steps
  ae.loop.checkpoint_every_steps = every
  ae.optim.warmup_steps = warmup
  ldm = config.ldm
  ldm.model.model_channels = 16
  ldm.model.num_res_blocks = 1
  ldm.model.num_head_channels = 8
  ldm.model.groups = 4
  ldm.loop.train_steps = steps
  ldm.loop.log_every_steps = every
  ldm.loop.checkpoint_every_steps = every
  ldm.optim.warmup_steps = warmup
  config.sample.batch_size = 20


def get_config():
  config = quickstart.get_config()
  config.data.batch_size = 16
  shrink(config, steps=60, every=20, warmup=10)
  config.sample.num_steps = 5
  config.evaluate.samples_per_class = 2
  config.evaluate.grid_columns = 2
  config.evaluate.training_samples_per_class = 2
  config.evaluate.digits_cnn.train_steps = 50
  return config
