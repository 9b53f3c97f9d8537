"""A latent diffusion model as one bundle: modules, parameters, noise schedule, latent scale, sampling defaults.

The same bundle describes a run trained here (`training.ldm.load_trained`), a diffusers pipeline folder
(`weights.pretrained.load_diffusers`) and an original single-file checkpoint (`weights.single_file`);
one generator (`latent_diffusion.generation.Generator`) samples all of them, and `save_diffusers`
exports any of them whose parts diffusers has.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion import parallel
from latent_diffusion.conditioning import Conditioning
from latent_diffusion.diffusion import NoiseSchedule
from latent_diffusion.models import UNet
from latent_diffusion.models.autoencoder import AutoencoderKL, VQModel


@dataclasses.dataclass
class LatentDiffusion:
  """Everything sampling and export need.

  params: {'unet', 'autoencoder', 'conditioner': {conditioner name: params}} (float32 arrays).
  schedule_config: NoiseSchedule.create keyword arguments of `schedule`.
  sampler / sampler_options: the default sampler and its schedule-specific options (prediction_type,
    spacing, steps_offset, ...; a diffusers scheduler_config.json holds them).
  latent_shape: the [h, w, c] the UNet was trained at (sampling may ask for other sizes).
  source_configs: config dicts read from files ('unet', 'vae', 'scheduler'), kept for a lossless export.
  """
  unet: UNet
  autoencoder: AutoencoderKL | VQModel
  conditioning: Conditioning
  schedule: NoiseSchedule
  schedule_config: dict
  scale_factor: float
  latent_shape: tuple[int, int, int]
  sampler: str
  sampler_options: dict
  params: dict
  source_configs: dict = dataclasses.field(default_factory=dict)

  @property
  def prediction_type(self) -> str:
    return self.sampler_options.get("prediction_type", "epsilon")

  @property
  def vae_scale(self) -> int:
    """Pixels per latent (the autoencoder's downsampling factor f)."""
    return self.autoencoder.downsampling_factor

  @property
  def default_size(self) -> tuple[int, int]:
    """(height, width) in pixels the UNet was trained at."""
    return self.latent_shape[0] * self.vae_scale, self.latent_shape[1] * self.vae_scale

  def abstract_params(self, conditioner: bool) -> dict:
    """The params' shapes and dtypes (jax.ShapeDtypeStruct) in their modules' logical axis boxes: 'unet',
    'autoencoder' and, when `conditioner`, the conditioners' (e.g. a frozen text encoder's)."""
    h, w, _ = self.latent_shape
    image = (1, h * self.vae_scale, w * self.vae_scale, self.autoencoder.in_channels)
    boxed = {"unet": unet_init_fn(self.unet, self.conditioning, self.latent_shape),
             "autoencoder": lambda rng: self.autoencoder.init({"params": rng, "sample": rng},
                                                              jnp.zeros(image, jnp.float32))["params"]}
    abstract = {name: jax.eval_shape(init, jax.random.key(0)) for name, init in boxed.items()}
    if conditioner:
      abstract["conditioner"] = self.conditioning.abstract_params()
    return abstract

  def boxed_params(self) -> dict:
    """`params` wearing their modules' logical axis annotations (for shardings)."""
    return parallel.box_like(self.abstract_params(bool(self.params.get("conditioner"))), self.params)

  def placed(self, mesh, mesh_config) -> "LatentDiffusion":
    """This bundle with its parameters on `mesh`, sharded by their logical axes (done once, not per call)."""
    params, _ = parallel.place(self.boxed_params(), mesh, mesh_config)
    return dataclasses.replace(self, params=params)


def unet_init_fn(unet: UNet, conditioning: Conditioning, latent_shape: tuple[int, int, int]):
  """rng -> the UNet's boxed initial params, built with the UNet kwargs the conditioning produces."""
  inputs = conditioning.example_inputs(1, latent_shape)
  abstract_cond = nn.unbox(conditioning.abstract_params())
  kwargs = jax.eval_shape(conditioning.unet_kwargs, abstract_cond, inputs)

  def init(rng):
    x = jnp.zeros((1, *latent_shape), jnp.float32)
    dummy = {name: jnp.zeros(v.shape, v.dtype) for name, v in kwargs.items()}
    return unet.init(rng, x, jnp.zeros((1,), jnp.int32), **dummy)["params"]

  return init
