"""Image degradations of super-resolution (LDM-SR): optional Gaussian blur, then bicubic downsampling by an
integer factor; bicubic upsampling is the baseline a super-resolution model must beat.

Images are float32 [H, W, C] in [-1, 1] (NHWC without the batch axis). Resampling is Pillow's bicubic
(a = -0.5) with antialiasing when downsampling, per channel in 32-bit float, i.e. what PIL.Image.resize
does to an image (and torch's interpolate(mode='bicubic', antialias=True)). Additive noise is drawn per
training step on the device (latent_diffusion.conditioning.low_res).
"""

import numpy as np
from PIL import Image
from scipy import ndimage


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  channels = [Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F").resize(
      (width, height), Image.Resampling.BICUBIC) for c in range(image.shape[-1])]
  return np.stack([np.asarray(c, np.float32) for c in channels], axis=-1)


def _check(image: np.ndarray, factor: int) -> np.ndarray:
  image = np.asarray(image, np.float32)
  if image.ndim != 3:
    raise ValueError(f"Expected one image [H, W, C], got shape {image.shape}.")
  if factor < 1 or image.shape[0] % factor or image.shape[1] % factor:
    raise ValueError(f"Image of shape {image.shape} does not downsample by {factor}: its height and width must be "
                     f"multiples of {factor}.")
  return image


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """[H, W, C] blurred by a Gaussian of `sigma` pixels in height and width (reflected borders); sigma 0: as is."""
  if sigma <= 0:
    return np.asarray(image, np.float32)
  return ndimage.gaussian_filter(np.asarray(image, np.float32), sigma=(sigma, sigma, 0), mode="reflect")


def bicubic_downsample(image: np.ndarray, factor: int) -> np.ndarray:
  """[H, W, C] -> [H / factor, W / factor, C], antialiased bicubic."""
  image = _check(image, factor)
  return _resize(image, image.shape[0] // factor, image.shape[1] // factor)


def bicubic_upsample(image: np.ndarray, factor: int) -> np.ndarray:
  """[h, w, C] -> [h * factor, w * factor, C], bicubic (the baseline of super-resolution)."""
  image = np.asarray(image, np.float32)
  return _resize(image, image.shape[0] * factor, image.shape[1] * factor)


def degrade(image: np.ndarray, factor: int, blur_sigma: float = 0.0) -> np.ndarray:
  """The low-resolution input of super-resolution: blur (sigma in high-resolution pixels), then bicubic x1/factor;
  [H, W, C] -> [H / factor, W / factor, C]."""
  return bicubic_downsample(gaussian_blur(_check(image, factor), blur_sigma), factor)


def bicubic_residual(image: np.ndarray, factor: int, blur_sigma: float = 0.0) -> np.ndarray:
  """What bicubic upsampling of the degraded image misses: image - bicubic_upsample(degrade(image)), [H, W, C]
  (the target of residual super-resolution, as SRDiff / ResShift)."""
  return np.asarray(image, np.float32) - bicubic_upsample(degrade(image, factor, blur_sigma), factor)
