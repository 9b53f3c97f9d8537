"""The text quickstart shrunk to seconds (tests, smoke checks): the frozen sentence encoder runs inside the step.

  python -m latent_diffusion.cli.train --config=configs/tiny_text.py --workdir=/tmp/tiny_text
"""

from latent_diffusion.configs import text_quickstart, tiny


def get_config():
  config = text_quickstart.get_config()
  config.data.batch_size = 8
  config.data.digit_pairs.examples = 256
  tiny.shrink(config, steps=20, every=10, warmup=5)
  config.ldm.conditioning.text.source = "caption"
  config.ldm.conditioning.text.max_length = 8
  config.sample.num_steps = 3
  pairs = config.evaluate.digit_pairs
  pairs.samples_seen_pairs = 20
  pairs.samples_heldout_pairs = 20
  pairs.samples_heldout_templates = 20
  pairs.grid_rows_per_set = 2
  return config
