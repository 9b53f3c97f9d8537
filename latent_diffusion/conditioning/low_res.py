"""Super-resolution as LDM-SR: the low-resolution image, at the latent grid, concatenated to x_t (diffusers'
LDMSuperResolutionPipeline: a 3-channel VQ latent + the 3-channel low-resolution image = a 6-channel UNet).

Model input 'low_res' float32 [B, h, w, C] in [-1, 1], h = H / f for the first stage's factor f (the
super-resolution factor). Training makes it from each record's image (data.degradations.degrade: optional blur,
bicubic x1/f, on the host) and adds Gaussian noise of a standard deviation drawn per example from
U(0, noise_std) on the device, every step. The low-resolution image defines the task: its null keeps it.

Residual mode (`residual=True`, as SRDiff / ResShift): the first stage encodes, and the LDM generates, what bicubic
upsampling of the low-resolution image misses (data.degradations.bicubic_residual); a sample is
bicubic_up(low_res) + the decoded residual. Back-projection (`back_projection=N`, Irani & Peleg 1991) then corrects
a sample N times by what its own degradation misses of the input: x += bicubic_up(low_res - bicubic_down(x)), so that
it agrees with the low-resolution image it came from. jax.image.resize's bicubic resampling on the device
(antialiased when downsampling) equals Pillow's on the host (tests/tasks/test_masks_and_degradations.py).
"""

import jax
import numpy as np

from latent_diffusion.conditioning.concat import ConcatConditioner
from latent_diffusion.data import degradations


class LowResConditioner(ConcatConditioner):
  """Inputs {'low_res': float32 [B, h, w, C]}; UNet kwargs {'concat': same}. Bound to the first stage for f."""
  name = "low_res"
  reads_image = True

  def __init__(self, channels: int, blur_sigma: float = 0.0, noise_std: float = 0.0, residual: bool = False,
               back_projection: int = 0, factor: int | None = None):
    super().__init__("low_res", channels, null="keep")
    if blur_sigma < 0 or noise_std < 0 or back_projection < 0:
      raise ValueError(f"blur_sigma={blur_sigma}, noise_std={noise_std} and back_projection={back_projection} must "
                       f"be >= 0 (config.ldm.conditioning.low_res).")
    if back_projection and blur_sigma:
      raise ValueError(f"back_projection={back_projection} applies the degradation on the device, which is bicubic "
                       f"downsampling only; with blur_sigma={blur_sigma} set back_projection=0 "
                       f"(config.ldm.conditioning.low_res).")
    self.blur_sigma, self.noise_std, self.residual, self.factor = float(blur_sigma), float(noise_std), residual, factor
    self.back_projection = int(back_projection)

  def with_factor(self, factor: int) -> "LowResConditioner":
    """This conditioner for a first stage of downsampling factor `factor` (the super-resolution factor)."""
    return LowResConditioner(self.channels, self.blur_sigma, self.noise_std, self.residual, self.back_projection,
                             factor)

  def with_first_stage(self, autoencoder, params, scale_factor):
    return self.with_factor(autoencoder.downsampling_factor)

  def _factor(self) -> int:
    if self.factor is None:
      raise ValueError("The low-resolution conditioner is not bound to a first stage (Conditioning.with_first_stage).")
    return self.factor

  def prepare(self, example: dict) -> dict:
    if "image" not in example:
      raise ValueError(f"Training example {example.get('key', '')!r} has no 'image' to degrade (super-resolution).")
    low = degradations.degrade(example["image"], self._factor(), self.blur_sigma)
    return {"low_res": self._checked(low, f"training example {example.get('key', '')!r}")}

  def train_inputs(self, batch: dict, rng) -> dict:
    low = batch["low_res"]
    if self.noise_std == 0.0:
      return batch
    std_rng, noise_rng = jax.random.split(rng)
    std = jax.random.uniform(std_rng, (low.shape[0], 1, 1, 1), maxval=self.noise_std)
    return {"low_res": low + std * jax.random.normal(noise_rng, low.shape, low.dtype)}

  def first_stage_image(self, image: np.ndarray) -> np.ndarray:
    if not self.residual:
      return image
    return degradations.bicubic_residual(image, self._factor(), self.blur_sigma)

  def pixels(self, decoded, inputs: dict):
    low = inputs["low_res"].astype(decoded.dtype)
    upsample = lambda x: jax.image.resize(x, decoded.shape, "bicubic")
    image = decoded + upsample(low) if self.residual else decoded
    for _ in range(self.back_projection):
      image = image + upsample(low - jax.image.resize(image, low.shape, "bicubic", antialias=True))
    return image
