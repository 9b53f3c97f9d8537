"""Benchmark sizes as diffusers config dicts, shared verbatim by every system (stdlib only).

Each size gives the UNet2DConditionModel, AutoencoderKL and DDIMScheduler configs plus the batch
shapes. All systems build their models from these same dicts, so the architectures are identical.
"""

_SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1, "set_alpha_to_one": False,
              "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading"}


def _unet(channels: list[int], context_dim: int, heads: int | list[int], latent: int, **options) -> dict:
  """SD-shaped UNet: cross-attention at every level but the lowest-resolution one (as SD 1.x / 2.x)."""
  levels = len(channels)
  return {**options, "_class_name": "UNet2DConditionModel", "sample_size": latent, "in_channels": 4, "out_channels": 4,
          "down_block_types": ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
          "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
          "block_out_channels": channels, "layers_per_block": 2, "cross_attention_dim": context_dim,
          "attention_head_dim": heads, "norm_num_groups": 32}


def _vae(channels: list[int], layers: int, image: int) -> dict:
  return {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "sample_size": image,
          "down_block_types": ["DownEncoderBlock2D"] * len(channels),
          "up_block_types": ["UpDecoderBlock2D"] * len(channels), "block_out_channels": channels,
          "layers_per_block": layers, "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.18215}


SIZES = {
    # The CPU configuration: SD-shaped UNet scaled down, 32x32x4 latents (256 px images).
    "cpu-small": dict(unet=_unet([64, 128, 256], 128, 8, 32), vae=_vae([32, 64, 128, 128], 1, 256),
                      train_batch=8, sample_batch=4, vae_batch=4, context_tokens=77),
    # Twice the widths (about 4x the FLOPs per image): how each system scales.
    "cpu-medium": dict(unet=_unet([128, 256, 512], 256, 8, 32), vae=_vae([64, 128, 256, 256], 1, 256),
                       train_batch=8, sample_batch=4, vae_batch=4, context_tokens=77),
    # Stable Diffusion 1.5 shapes, for TPU / GPU runs (64x64x4 latents, 512 px images, 768-wide CLIP context).
    "sd15": dict(unet=_unet([320, 640, 1280, 1280], 768, 8, 64), vae=_vae([128, 256, 512, 512], 2, 512),
                 train_batch=32, sample_batch=4, vae_batch=8, context_tokens=77),
    # Stable Diffusion 2 base (MLPerf Training's model): 64-channel heads, linear projections, 1024-wide context.
    "sd2": dict(unet=_unet([320, 640, 1280, 1280], 1024, [5, 10, 20, 20], 64, use_linear_projection=True),
                vae=_vae([128, 256, 512, 512], 2, 512), train_batch=32, sample_batch=4, vae_batch=8, context_tokens=77),
}

SAMPLE_STEPS = 50
GUIDANCE = 7.5
SCHEDULER = _SCHEDULER
WORKLOADS = ("train", "sample", "vae")


def latent_shape(size: str) -> tuple[int, int, int]:
  """(h, w, c) of the UNet input."""
  unet = SIZES[size]["unet"]
  return unet["sample_size"], unet["sample_size"], unet["in_channels"]
