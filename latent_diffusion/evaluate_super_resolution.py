"""Evaluation of a super-resolution model on crops of photos never seen in training, at the training size and
larger.

Held-out crops (config.data 'val' split, at each of config.evaluate.size_multipliers x the training size) are
degraded as in training (blur, bicubic x1/f, no noise) and super-resolved; PSNR (dB) and SSIM (scikit-image,
pixels in [0, 1]) against the originals are reported beside bicubic upsampling of the same inputs (the baseline
to beat) and the autoencoder's reconstruction of the originals (the ceiling of anything it decodes).
"""

import pathlib

import jax
import ml_collections
import numpy as np

from latent_diffusion import data, evaluate, evaluate_tasks, generation, image_grid
from latent_diffusion.data import degradations
from latent_diffusion.training import ldm


def psnr_ssim(images: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
  """Mean PSNR (dB) and SSIM of images [N, H, W, C] against reference, both in [0, 1]."""
  from skimage.metrics import structural_similarity

  mse = np.mean(np.square(images - reference), axis=(1, 2, 3))
  psnr = float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))))
  ssim = float(np.mean([structural_similarity(a, b, data_range=1.0, channel_axis=-1)
                        for a, b in zip(images, reference)]))
  return psnr, ssim


def evaluate_super_resolution(config, workdir: pathlib.Path, mesh) -> dict:
  """PSNR / SSIM of super-resolved, bicubic and reconstructed crops per size; writes workdir/samples_<m>x.png."""
  generator = generation.Generator(ldm.load_trained(workdir, mesh, config))
  factor, blur = generator.model.vae_scale, config.ldm.conditioning.low_res.blur_sigma
  figures = {}
  for multiplier in config.evaluate.size_multipliers:
    side = config.data.image_size * multiplier
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.image_size = side
    split = data.make_dataset(data_config, "val")
    high = np.stack([split[i]["image"] for i in range(min(config.evaluate.task_samples, len(split)))])
    low = np.stack([degradations.degrade(x, factor, blur) for x in high])
    batch = max(1, config.sample.batch_size // multiplier**2)
    images = generation.generate_in_batches(generator, {"low_res": low}, batch, seed=config.seed + 3,
                                            **evaluate.sample_settings(config))
    reference = evaluate_tasks.to_unit(high)
    bicubic = np.clip(evaluate_tasks.to_unit(np.stack([degradations.bicubic_upsample(x, factor) for x in low])), 0, 1)
    reconstructed = evaluate_tasks.to_unit(evaluate_tasks.reconstruct(generator.model, high))
    scores = {name: psnr_ssim(x, reference) for name, x in
              (("model", images), ("bicubic", bicubic), ("autoencoder", reconstructed))}
    figures[f"{side}px"] = {**{f"{name}_psnr_db": s[0] for name, s in scores.items()},
                            **{f"{name}_ssim": s[1] for name, s in scores.items()}, "samples": int(len(high))}
    if jax.process_index() == 0:
      rows = min(8, len(high))
      grid = np.stack([bicubic[:rows], images[:rows], reference[:rows]], axis=1)
      image_grid.save_grid(grid.reshape(-1, *images.shape[1:]), rows=rows, path=workdir / f"samples_{multiplier}x.png")
  first = figures[f"{config.data.image_size}px"]
  return {"psnr_db": first["model_psnr_db"], "ssim": first["model_ssim"], "bicubic_psnr_db": first["bicubic_psnr_db"],
          "bicubic_ssim": first["bicubic_ssim"], "sizes": figures, "factor": factor,
          "sampler": f"{config.sample.sampler} {config.sample.num_steps} steps"}
