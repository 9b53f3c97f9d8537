"""Stable Diffusion 1.5 sizes: 512x512 images -> SD's KL-f8 VAE -> 64x64x4 latents -> the 860M UNet with
CLIP ViT-L/14 text context 77 x 768, bf16 compute; the shared base of the per-topology configs (sd15_v5p.py ...).

Pre-encode latents and text contexts (text.source='context'), then train stage 2:
  python -m latent_diffusion.encode --config=configs/sd15_v5p.py --config.ldm.conditioning.text.encoder_path=CLIP \
      --config.data.train_path='laion/{00000..00127}.tar' ...
  python -m latent_diffusion.train --config=configs/sd15_v5p.py --config.ldm.latents_path=... --workdir=...
The UNet matches diffusers' UNet2DConditionModel of SD 1.5 (checked by benchmarks/aot.py's parameter count).
"""

from latent_diffusion.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "tar_shards"
  config.data.image_size = 512
  config.data.crop = "random"
  config.data.batch_size = 256

  ae = config.autoencoder.model
  # SD's KL-f8 VAE (128, 256, 512, 512 channels, 2 blocks): f = 8, 4 latent channels.
  ae.in_channels, ae.ch, ae.ch_mult, ae.num_res_blocks, ae.z_channels, ae.embed_dim = 3, 128, (1, 2, 4, 4), 2, 4, 4

  m = config.ldm.model
  m.model_channels, m.channel_mult, m.num_res_blocks = 320, (1, 2, 4, 4), 2
  m.attention_resolutions, m.num_heads, m.num_head_channels, m.transformer_depth = (1, 2, 4), 8, -1, 1
  m.use_linear_projection, m.use_scale_shift_norm, m.groups = False, False, 32
  m.dtype = "bfloat16"

  ldm = config.ldm
  ldm.conditioning.kinds = ("text",)
  ldm.conditioning.drop_prob = 0.1
  ldm.conditioning.text.max_length = 77
  ldm.conditioning.text.source = "context"
  d = ldm.diffusion
  d.beta_schedule, d.beta_start, d.beta_end = "scaled_linear", 0.00085, 0.012
  ldm.scale_by_std = False
  ldm.scale_factor = 0.18215
  ldm.optim.lr = 1e-4
  ldm.optim.warmup_steps = 10_000
  config.sample.guidance_scale = 7.5
  config.sample.batch_size = 16
  return config


def slice_config(mesh_shape: tuple[int, int, int], batch_size: int, attention_impl: str, remat_policy: str = "none"):
  """This config set up for one TPU slice: mesh (data, fsdp, tensor), global batch, attention kernel, remat policy;
  the per-topology files (sd15_v5p.py ...) each name their setup through it."""
  config = get_config()
  config.mesh.shape = mesh_shape
  config.data.batch_size = batch_size
  config.ldm.model.attention_impl = attention_impl
  config.ldm.model.remat_policy = remat_policy
  return config
