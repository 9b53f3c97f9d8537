"""Class-conditional image generation as one compiled function: noise -> sampler -> decoder.

`make_generate_fn` builds `generate(unet_params, ae_params, rng, labels) -> images`, jitted once
per (batch size, sampler settings); every sampler step runs inside one lax.scan.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from latent_diffusion.diffusion import SAMPLERS, NoiseSchedule
from latent_diffusion.models import AutoencoderKL, UNet


def make_generate_fn(unet: UNet, ae: AutoencoderKL, schedule: NoiseSchedule, sample_config,
                     latent_shape: tuple[int, int, int], scale_factor: float, prediction_type: str,
                     null_label: int | None) -> Callable:
  """Returns jit(unet_params, ae_params, rng, labels [B] int32) -> images [B, H, W, C] in [0, 1].

  With `null_label` set and guidance_scale != 1, classifier-free guidance mixes the conditional
  and null-label predictions; labels are ignored by an unconditional UNet (null_label None).
  """
  if sample_config.sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sample_config.sampler!r} (config.sample.sampler); known: {sorted(SAMPLERS)}.")
  sampler = SAMPLERS[sample_config.sampler]
  options = dict(num_steps=sample_config.num_steps, guidance_scale=sample_config.guidance_scale,
                 prediction_type=prediction_type, spacing=sample_config.spacing)
  if sample_config.sampler == "ddim":
    options.update(eta=sample_config.eta)

  @jax.jit
  def generate(unet_params, ae_params, rng, labels):
    noise_rng, sampler_rng = jax.random.split(rng)
    x_T = jax.random.normal(noise_rng, (labels.shape[0], *latent_shape))       # [B, h, w, c]
    model_fn = lambda x_t, t, cond: unet.apply({"params": unet_params}, x_t, t, **cond)
    if null_label is None:
      cond = uncond = None
    else:
      cond, uncond = {"y": labels}, {"y": jnp.full_like(labels, null_label)}
    z0 = sampler(model_fn, schedule, x_T, sampler_rng, cond=cond, uncond=uncond, **options)
    images = ae.apply({"params": ae_params}, z0 / scale_factor, method="decode")  # VQ: quantizes first
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)

  return generate


def generate_for_labels(generate: Callable, unet_params, ae_params, rng: jax.Array, labels: np.ndarray,
                        batch_size: int) -> np.ndarray:
  """Runs `generate` over `labels` in fixed-size batches (last one padded: one compile)."""
  outputs = []
  for start in range(0, len(labels), batch_size):
    chunk = labels[start:start + batch_size]
    padded = np.pad(chunk, (0, batch_size - len(chunk)), mode="edge").astype(np.int32)
    images = generate(unet_params, ae_params, jax.random.fold_in(rng, start), padded)
    outputs.append(np.asarray(images)[:len(chunk)])
  return np.concatenate(outputs)


def save_grid(images: np.ndarray, rows: int, path, upscale: int = 4, gap: int = 1) -> None:
  """Writes images [rows * cols, H, W, C] in [0, 1] as one PNG grid (row-major), upscaled.

  Cells are separated by `gap` mid-grey pixels (before upscaling).
  """
  images = np.pad(images, ((0, 0), (0, gap), (0, gap), (0, 0)), constant_values=0.5)
  n, h, w, c = images.shape
  cols = n // rows
  grid = images[:rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  to_pil(np.repeat(np.repeat(grid, upscale, axis=0), upscale, axis=1)).save(path)


def to_pil(image: np.ndarray) -> Image.Image:
  """[H, W, 1 or 3] in [0, 1] -> 8-bit PIL image."""
  pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)

