"""Evaluator 'super_resolution': PSNR / SSIM of super-resolved crops of photos never seen in training, at the
training size and larger.

Held-out crops (config.data's 'val' split, at each of config.evaluate.tasks.size_multipliers x the training size)
are degraded as in training (blur, bicubic x1/f, no noise) and super-resolved; PSNR (dB) and SSIM (scikit-image,
pixels in [0, 1]) against the originals are reported beside bicubic upsampling of the same inputs (the baseline
to beat) and the autoencoder's reconstruction of the originals (the ceiling of anything it decodes; with
residual super-resolution, bicubic upsampling + its reconstruction of the residual).
"""

import pathlib

import ml_collections
import numpy as np

from latent_diffusion import data, generation, image_grid
from latent_diffusion.data import degradations
from latent_diffusion.evaluation import conditioned


def psnr_ssim(images: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
  """Mean PSNR (dB) and SSIM of images [N, H, W, C] against reference, both in [0, 1]."""
  from skimage.metrics import structural_similarity

  mse = np.mean(np.square(images - reference), axis=(1, 2, 3))
  psnr = float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))))
  ssim = float(np.mean([structural_similarity(a, b, data_range=1.0, channel_axis=-1)
                        for a, b in zip(images, reference)]))
  return psnr, ssim


def held_out_crops(data_config, side: int, count: int) -> np.ndarray:
  """The first `count` images [N, side, side, C] in [-1, 1] of config.data's 'val' split rendered at `side`."""
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.image_size = side
  split = data.make_dataset(data_config, "val")
  return np.stack([split[i]["image"] for i in range(min(count, len(split)))])


def evaluate_super_resolution(cfg, results, ctx, suffix: str) -> dict:
  """PSNR / SSIM of super-resolved, bicubic and reconstructed crops per size; writes
  workdir/samples<suffix>_<m>x.png (bicubic | model | original)."""
  config, options = ctx.config, ctx.config.evaluate.tasks
  model = ctx.model()
  generator = generation.Generator(model)
  factor, blur = model.vae_scale, config.ldm.conditioning.low_res.blur_sigma
  figures = {}
  for multiplier in options.size_multipliers:
    side = config.data.image_size * multiplier
    high = held_out_crops(config.data, side, options.samples)
    low = np.stack([degradations.degrade(x, factor, blur) for x in high])
    batch = max(1, config.sample.batch_size // multiplier**2)
    images = conditioned.generate(generator, config, {"low_res": low}, batch)
    reference = conditioned.to_unit(high)
    bicubic = np.clip(conditioned.to_unit(np.stack([degradations.bicubic_upsample(x, factor) for x in low])), 0, 1)
    # The ceiling of anything decoded: the first stage's reconstruction of what it models (residual mode: the
    # bicubic residual, added back to the bicubic upsampling).
    modelled = np.stack([model.conditioning.first_stage_image(x) for x in high])
    reconstructed = conditioned.reconstruct(model, modelled) + (high - modelled)
    reconstructed = np.clip(conditioned.to_unit(reconstructed), 0, 1)
    for name, x in (("model", images), ("bicubic", bicubic), ("autoencoder", reconstructed)):
      psnr, ssim = psnr_ssim(x, reference)
      figures[f"super_resolution_{name}_psnr_db_{side}px"] = psnr
      figures[f"super_resolution_{name}_ssim_{side}px"] = ssim
    if ctx.is_writer:
      rows = min(8, len(high))
      grid = np.stack([bicubic[:rows], images[:rows], reference[:rows]], axis=1)
      image_grid.save_grid(grid.reshape(-1, *images.shape[1:]), rows=rows,
                           path=pathlib.Path(ctx.workdir) / f"samples{suffix}_{multiplier}x.png")
  figures["super_resolution_samples"] = int(len(high))
  figures["super_resolution_factor"] = int(factor)
  return conditioned.named(figures, suffix)
