"""Stable Diffusion 2 (base, 512 px) sizes, the MLPerf Training stable-diffusion model: as sd15.py but 64-channel
heads (5, 10, 20, 20 per level), linear projections in the transformer blocks and OpenCLIP ViT-H/14's penultimate
layer as context, 77 x 1024.
"""

from latent_diffusion.configs import sd15


def get_config():
  config = sd15.get_config()
  m = config.ldm.model
  m.num_heads, m.num_head_channels, m.use_linear_projection = -1, 64, True
  config.ldm.conditioning.text.layer = "penultimate"
  return config
