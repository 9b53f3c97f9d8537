"""A seconds-long run of every stage (tests and smoke checks); the quickstart with tiny sizes.

  python -m latent_diffusion.train --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.data.batch_size = 16
  ae = config.autoencoder
  ae.model.ch = 8
  ae.model.groups = 4
  ae.loop.train_steps = 60
  ae.loop.log_every_steps = 20
  ae.loop.eval_every_steps = 60
  ae.loop.checkpoint_every_steps = 20
  ae.optim.warmup_steps = 10
  ldm = config.ldm
  ldm.model.model_channels = 16
  ldm.model.num_res_blocks = 1
  ldm.model.num_head_channels = 8
  ldm.model.groups = 4
  ldm.loop.train_steps = 60
  ldm.loop.log_every_steps = 20
  ldm.loop.checkpoint_every_steps = 20
  ldm.optim.warmup_steps = 10
  config.sample.num_steps = 5
  config.sample.batch_size = 20
  config.evaluate.samples_per_class = 2
  config.evaluate.grid_columns = 2
  config.evaluate.training_samples_per_class = 2
  config.evaluate.digits_cnn.train_steps = 50
  return config
