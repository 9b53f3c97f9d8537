"""diffusers' LDMSuperResolutionPipeline folders (the LDM paper's 4x super-resolution model, e.g.
CompVis/ldm-super-resolution-4x-openimages) as a `bundle.LatentDiffusion`.

The folder holds model_index.json, unet/ (a UNet2DModel whose in_channels = VQ latent channels + image
channels: 3 + 3), vqvae/ (a VQModel, f=4) and scheduler/. The pipeline concatenates the low-resolution image in
[-1, 1] to the latents at the latent grid (our 'low_res' conditioner, factor f), runs the UNet without guidance
and decodes the final latents as they are (quantized, no latent scale: scale_factor 1). Everything is read
from local files.
"""

import pathlib

from latent_diffusion.bundle import LatentDiffusion
from latent_diffusion.conditioning import Conditioning, LowResConditioner
from latent_diffusion.weights import files, pretrained, scheduler as scheduler_weights, unet as unet_weights

_PIPELINE_CLASS = "LDMSuperResolutionPipeline"
_COMPONENTS = ("unet", "vqvae", "scheduler")


def load_ldm_super_resolution(folder: str | pathlib.Path) -> LatentDiffusion:
  """Reads a diffusers LDMSuperResolutionPipeline folder; sample it with {'low_res': [B, h, w, 3] in [-1, 1]}."""
  folder = pathlib.Path(folder)
  index = files.read_json(folder / "model_index.json", "diffusers pipeline index (model_index.json)")
  if index.get("_class_name") != _PIPELINE_CLASS:
    raise ValueError(f"{folder / 'model_index.json'} describes a {index.get('_class_name')!r}, not an "
                     f"{_PIPELINE_CLASS}.")
  absent = [name for name in _COMPONENTS if not index.get(name) or index[name][0] is None]
  if absent:
    raise ValueError(f"{folder / 'model_index.json'} lacks the components {absent}; {_PIPELINE_CLASS} needs "
                     f"{list(_COMPONENTS)}.")
  unet, unet_params, unet_config = pretrained.load_diffusers_model(
      folder / "unet", unet_weights.from_diffusers_config, unet_weights.diffusers_rules,
      lambda m, c: unet_weights.abstract_params(m, c["sample_size"], c["in_channels"]))
  vae, vae_params, vae_config = pretrained.load_diffusers_vae(folder / "vqvae")
  image_channels = unet.in_channels - vae.embed_dim
  if image_channels != vae.in_channels:
    raise ValueError(f"{folder}: the UNet takes {unet.in_channels} channels, the VQ model's latents have "
                     f"{vae.embed_dim} and its images {vae.in_channels}: expected in_channels = "
                     f"{vae.embed_dim + vae.in_channels} (latents + low-resolution image).")
  scheduler_config = files.read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
  schedule, sampler, options = scheduler_weights.from_diffusers_scheduler(scheduler_config)
  conditioning = Conditioning([LowResConditioner(image_channels)]).with_first_stage(vae, vae_params, 1.0)
  size = unet_config["sample_size"]
  size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
  return LatentDiffusion(
      unet=unet, autoencoder=vae, conditioning=conditioning, schedule=schedule,
      schedule_config=scheduler_weights.schedule_config_from_diffusers(scheduler_config), scale_factor=1.0,
      latent_shape=(*size, vae.embed_dim), sampler=sampler, sampler_options=options,
      params={"unet": unet_params, "autoencoder": vae_params},
      source_configs={"unet": unet_config, "vqvae": vae_config, "scheduler": scheduler_config})
