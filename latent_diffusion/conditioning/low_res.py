"""Super-resolution as LDM-SR: the low-resolution image, at the latent grid, concatenated to x_t (diffusers'
LDMSuperResolutionPipeline: a 3-channel VQ latent + the 3-channel low-resolution image = a 6-channel UNet).

Model input 'low_res' float32 [B, h, w, C] in [-1, 1], h = H / f for the first stage's factor f (the
super-resolution factor). Training makes it from each record's image (data.degradations.degrade: optional blur,
bicubic x1/f, on the host) and adds Gaussian noise of a standard deviation drawn per example from
U(0, noise_std) on the device, every step. The low-resolution image defines the task: its null keeps it.
"""

import jax

from latent_diffusion.conditioning.concat import ConcatConditioner
from latent_diffusion.data import degradations


class LowResConditioner(ConcatConditioner):
  """Inputs {'low_res': float32 [B, h, w, C]}; UNet kwargs {'concat': same}. Bound to the first stage for f."""
  name = "low_res"
  reads_image = True

  def __init__(self, channels: int, blur_sigma: float = 0.0, noise_std: float = 0.0, factor: int | None = None):
    super().__init__("low_res", channels, null="keep")
    if blur_sigma < 0 or noise_std < 0:
      raise ValueError(f"blur_sigma={blur_sigma} and noise_std={noise_std} must be >= 0 "
                       f"(config.ldm.conditioning.low_res).")
    self.blur_sigma, self.noise_std, self.factor = float(blur_sigma), float(noise_std), factor

  def with_first_stage(self, autoencoder, params, scale_factor):
    return LowResConditioner(self.channels, self.blur_sigma, self.noise_std, autoencoder.downsampling_factor)

  def prepare(self, example: dict) -> dict:
    if "image" not in example:
      raise ValueError(f"Training example {example.get('key', '')!r} has no 'image' to degrade (super-resolution).")
    if self.factor is None:
      raise ValueError("The low-resolution conditioner is not bound to a first stage (Conditioning.with_first_stage).")
    low = degradations.degrade(example["image"], self.factor, self.blur_sigma)
    return {"low_res": self._checked(low, f"training example {example.get('key', '')!r}")}

  def train_inputs(self, batch: dict, rng) -> dict:
    low = batch["low_res"]
    if self.noise_std == 0.0:
      return batch
    std_rng, noise_rng = jax.random.split(rng)
    std = jax.random.uniform(std_rng, (low.shape[0], 1, 1, 1), maxval=self.noise_std)
    return {"low_res": low + std * jax.random.normal(noise_rng, low.shape, low.dtype)}
