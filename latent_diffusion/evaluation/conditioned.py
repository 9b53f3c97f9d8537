"""What the task evaluators (inpainting, semantic, layout, super_resolution) share: images from the evaluated model
for condition requests with config.sample's settings, the first stage's reconstructions (the ceiling of anything
decoded), pixel range conversions and figure names.
"""

import jax
import numpy as np

from latent_diffusion import generation
from latent_diffusion.conditioning.inpaint import first_stage_latent


def generate(generator: generation.Generator, config, request: dict, batch_size: int | None = None,
             guidance_scale: float | None = None) -> np.ndarray:
  """Images [N, H, W, C] in [0, 1] for a request of N rows, with config.sample's steps and guidance (unless given),
  in batches of batch_size (default config.sample.batch_size), noise from config.evaluate.seed."""
  scale = config.sample.guidance_scale if guidance_scale is None else guidance_scale
  return generation.generate_in_batches(generator, request, batch_size or config.sample.batch_size,
                                        seed=config.evaluate.seed, num_steps=config.sample.num_steps,
                                        guidance_scale=scale)


def reconstruct(model, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
  """The first stage's reconstructions [N, H, W, C] in [-1, 1] of images in [-1, 1] (posterior mode), for a
  bundle.LatentDiffusion `model`."""
  ae, params = model.autoencoder, model.params["autoencoder"]
  recon = jax.jit(lambda x: ae.apply({"params": params}, first_stage_latent(ae, params, x), method=type(ae).decode))
  return np.concatenate([np.clip(np.asarray(recon(images[i:i + batch_size])), -1, 1)
                         for i in range(0, len(images), batch_size)])


def to_unit(images: np.ndarray) -> np.ndarray:
  """[-1, 1] -> [0, 1] (data-set pixels to generator pixels)."""
  return (np.asarray(images) + 1.0) / 2.0


def to_data(images: np.ndarray) -> np.ndarray:
  """[0, 1] -> [-1, 1] (generator pixels to data-set pixels)."""
  return np.asarray(images) * 2.0 - 1.0


def named(figures: dict, suffix: str) -> dict:
  """figures with the evaluator's name suffix (evaluators.figure_suffix) on every top-level name."""
  return {f"{name}{suffix}": value for name, value in figures.items()}
