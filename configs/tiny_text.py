"""The text quickstart shrunk to seconds (tests, smoke checks): the frozen sentence encoder runs inside the step.

  python -m latent_diffusion.train --config=configs/tiny_text.py --workdir=/tmp/tiny_text
"""

from configs import text_quickstart


def get_config():
  config = text_quickstart.get_config()
  config.data.batch_size = 8
  config.data.digit_pairs.examples = 256
  ae = config.autoencoder
  ae.model.ch = 8
  ae.model.groups = 4
  ae.loop.train_steps = 20
  ae.loop.log_every_steps = 10
  ae.loop.eval_every_steps = 20
  ae.loop.checkpoint_every_steps = 10
  ae.optim.warmup_steps = 5
  ldm = config.ldm
  ldm.conditioning.text.source = "caption"
  ldm.conditioning.text.max_length = 8
  ldm.model.model_channels = 16
  ldm.model.num_res_blocks = 1
  ldm.model.num_head_channels = 8
  ldm.model.groups = 4
  ldm.loop.train_steps = 20
  ldm.loop.log_every_steps = 10
  ldm.loop.checkpoint_every_steps = 10
  ldm.optim.warmup_steps = 5
  config.sample.num_steps = 3
  config.sample.batch_size = 20
  pairs = config.evaluate.digit_pairs
  pairs.samples_seen_pairs = 20
  pairs.samples_heldout_pairs = 20
  pairs.samples_heldout_templates = 20
  pairs.grid_rows_per_set = 2
  return config
