"""Tiny random Stable-Diffusion-shaped pipelines written by diffusers itself (16x16 images, f=2, 8x8x4 latents)."""

import pathlib

import diffusers
import numpy as np
import torch
import transformers

from tests import text_fixtures


def randomize(module: torch.nn.Module, seed: int) -> None:
  """diffusers zero-initialises output layers; random values make the comparison meaningful."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("weight") and p.ndim == 1:       # norm scales near 1
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.05 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(np.prod(p.shape[1:])))


def write_tiny_sd(folder: pathlib.Path, *, sd2: bool = False, inpainting: bool = False) -> pathlib.Path:
  """Saves a tiny random StableDiffusionPipeline under folder/pipeline and returns that path.

  sd2: the SD 2.x-like variant: linear projections, heads per level, upcast_attention, v-prediction with a
  zero-terminal-SNR trailing DDIM schedule, and a CLIP config with non-default bos / pad / projection_dim.
  inpainting: a StableDiffusionInpaintPipeline instead (9-channel UNet: latents + mask + masked-image latents).
  """
  tokenizer_dir = text_fixtures.write_tiny_clip_tokenizer(folder / "tokenizer_src")
  tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir)
  torch.manual_seed(0)
  text_config = text_fixtures.tiny_clip_text_config(len(tokenizer))
  if sd2:
    text_config.bos_token_id, text_config.pad_token_id, text_config.projection_dim = 500, 0, 48
  text_encoder = transformers.CLIPTextModel(text_config)
  unet_options = dict(use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True) if sd2 else \
      dict(attention_head_dim=4)
  unet = diffusers.UNet2DConditionModel(
      sample_size=8, in_channels=9 if inpainting else 4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
      cross_attention_dim=text_encoder.config.hidden_size, norm_num_groups=8, **unet_options)
  vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                latent_channels=4, norm_num_groups=8, sample_size=16)
  for i, module in enumerate((text_encoder, unet, vae)):
    randomize(module, i)
  schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1)
  if sd2:
    schedule.update(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
  pipeline_class = diffusers.StableDiffusionInpaintPipeline if inpainting else diffusers.StableDiffusionPipeline
  pipe = pipeline_class(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=diffusers.DDIMScheduler(**schedule), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(folder / "pipeline")
  return folder / "pipeline"


def diffusers_images(folder, prompts, latents: np.ndarray, num_steps: int, scheduler_config: dict | None = None,
                     **kwargs) -> np.ndarray:
  """diffusers' StableDiffusionPipeline from `folder` on NHWC latents: images [B, H, W, C] in [0, 1]."""
  pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
  if scheduler_config is not None:
    pipe.scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
  with torch.no_grad():
    out = pipe(prompts, num_inference_steps=num_steps, latents=torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()),
               output_type="np", **kwargs)
  return out.images


def diffusers_inpainted(folder, prompts, image: np.ndarray, mask: np.ndarray, latents: np.ndarray, num_steps: int,
                        **kwargs) -> np.ndarray:
  """diffusers' StableDiffusionInpaintPipeline from `folder`: images [B, H, W, C] in [0, 1] for NHWC images in
  [-1, 1], masks [B, H, W] (1 = to fill) and NHWC initial latents. diffusers draws the masked image's latent from
  the VAE posterior with its own generator; it is given the posterior mode here (what ours uses), encoded by
  diffusers' own VAE."""
  pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder, local_files_only=True)
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  image_t, mask_t = nchw(image), torch.from_numpy(mask[:, None].copy())
  with torch.no_grad():
    masked = pipe.vae.encode(image_t * (mask_t < 0.5)).latent_dist.mode() * pipe.vae.config.scaling_factor
    out = pipe(prompts, image=(image_t + 1) / 2, mask_image=mask_t, masked_image_latents=masked,
               height=image.shape[1], width=image.shape[2], num_inference_steps=num_steps, latents=nchw(latents),
               output_type="np", **kwargs)
  return out.images
