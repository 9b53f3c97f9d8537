"""Reconstruction quality of a stage-1 autoencoder on validation images: PSNR, SSIM, LPIPS, codebook use, a grid.

Reconstructions are deterministic: the posterior mode (KL) or the quantized encoding (VQ), clipped to
[-1, 1]. PSNR and SSIM are per image over [0, 1] pixels (SSIM as skimage's structural_similarity,
latent_diffusion.image_metrics), then averaged; LPIPS is reported when weights are given. For VQ
models, codebook usage is the fraction of codes used by the validation set and perplexity exp(H) of
their frequencies.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import image_metrics
from latent_diffusion.models import AutoencoderKL, VQModel
from latent_diffusion.models.lpips import LPIPS
from latent_diffusion.training import codebook


def reconstruct(model: AutoencoderKL | VQModel, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """(reconstructions [B, H, W, C] in [-1, 1], code indices [B, h, w] or None) of images in [-1, 1]."""
  variables = {"params": params}
  if isinstance(model, VQModel):
    quantized = model.apply(variables, model.apply(variables, images, method=VQModel.encode), method=VQModel.quantize)
    recon = model.apply(variables, quantized.latents, force_not_quantize=True, method=VQModel.decode)
    return jnp.clip(recon, -1.0, 1.0), quantized.indices
  posterior = model.apply(variables, images, method=AutoencoderKL.encode)
  return jnp.clip(model.apply(variables, posterior.mode(), method=AutoencoderKL.decode), -1.0, 1.0), None


class Evaluator:
  """evaluator(params) -> {'psnr_db', 'ssim', 'lpips'?, 'codebook_usage'?, 'perplexity'?, 'reconstructions'?}.

  images: validation images [N, H, W, C] in [-1, 1]; the reconstruction grid (originals above their
  reconstructions, the first grid_images, [1, 2H, nW, C] in [0, 1]) is included when with_grid.
  One compiled function per batch of batch_size images (the last batch padded).
  """

  def __init__(self, model: AutoencoderKL | VQModel, is_vq: bool, images: np.ndarray, lpips_params: Any | None,
               grid_images: int, batch_size: int):
    self.images, self.grid_images, self.batch_size, self.is_vq = images, grid_images, batch_size, is_vq
    self.num_codes = model.num_embeddings if is_vq else 0
    lpips = LPIPS()

    @jax.jit
    def evaluate_batch(params, lpips_weights, x):
      recon, indices = reconstruct(model, params, x)
      to_unit = lambda a: (a + 1.0) / 2.0
      out = {"psnr_db": image_metrics.psnr(to_unit(recon), to_unit(x)),
             "ssim": image_metrics.ssim(to_unit(recon), to_unit(x))}
      if lpips_weights is not None:
        out["lpips"] = lpips.apply({"params": lpips_weights}, x, recon)
      if indices is not None:
        out["indices"] = indices
      return out, recon

    self._evaluate_batch = evaluate_batch
    self._lpips_params = lpips_params

  def __call__(self, params: Any, with_grid: bool = True) -> dict:
    columns: dict[str, list[np.ndarray]] = {}
    grid_recon = None
    for start in range(0, len(self.images), self.batch_size):
      chunk = self.images[start:start + self.batch_size]
      padded = np.pad(chunk, [(0, self.batch_size - len(chunk))] + [(0, 0)] * 3)
      out, recon = jax.device_get(self._evaluate_batch(params, self._lpips_params, padded))
      for name, value in out.items():
        columns.setdefault(name, []).append(np.asarray(value)[:len(chunk)])
      if grid_recon is None:
        grid_recon = np.asarray(recon)[:min(self.grid_images, len(chunk))]   # never the padding
    results = {name: float(np.mean(np.concatenate(values))) for name, values in columns.items() if name != "indices"}
    if self.is_vq:
      counts = np.bincount(np.concatenate(columns["indices"]).reshape(-1), minlength=self.num_codes)
      results.update({k: float(v) for k, v in codebook.usage_metrics(jnp.asarray(counts, jnp.float32)).items()})
    if with_grid:
      results["reconstructions"] = reconstruction_grid(self.images[:len(grid_recon)], grid_recon)
    return results


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """[1, 2H, nW, C] in [0, 1]: originals [n, H, W, C] in the top row, their reconstructions below."""
  rows = [np.concatenate(list(batch), axis=1) for batch in (originals, reconstructions)]
  return np.clip((np.concatenate(rows, axis=0)[None] + 1.0) / 2.0, 0.0, 1.0)
