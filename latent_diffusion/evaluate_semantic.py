"""Evaluation of a semantic-synthesis model on held-out shapes maps, at the training size and larger.

The maps of held-out examples, rendered at each of config.evaluate.size_multipliers x the training size (the
data set draws the same objects at any resolution), condition the model; a per-pixel colour classifier fit on
real images (latent_diffusion.evaluate_tasks.PixelClassifier) reads a map back from each generated image, and
its mean IoU against the input map is the figure (real held-out images give the judge's ceiling; a map shifted
to another image's, the score of an image that ignores its map).
"""

import pathlib

import jax
import numpy as np

from latent_diffusion import evaluate, evaluate_tasks, generation, image_grid
from latent_diffusion.data import shapes
from latent_diffusion.training import ldm


def evaluate_semantic(config, workdir: pathlib.Path, mesh) -> dict:
  """mIoU of generated images against their maps per size; writes workdir/samples.png (maps over images)."""
  count, classes = config.evaluate.task_samples, shapes.SEGMENTATION_CLASSES
  train = evaluate_tasks.examples(config.data, "train", 1000)
  pixels = evaluate_tasks.PixelClassifier(train["image"], train["segmentation"])
  generator = generation.Generator(ldm.load_trained(workdir, mesh, config))
  figures, grid = {}, []
  for multiplier in config.evaluate.size_multipliers:
    side = config.data.image_size * multiplier
    val = evaluate_tasks.examples(config.data, "val", count, side)
    # Bigger images, fewer per call: the same number of pixels per compiled batch.
    batch = max(1, config.sample.batch_size // multiplier**2)
    images = generation.generate_in_batches(generator, {"segmentation": val["segmentation"]}, batch,
                                            seed=config.seed + 3, **evaluate.sample_settings(config))
    miou, per_class = evaluate_tasks.mean_iou(pixels(evaluate_tasks.to_data(images)), val["segmentation"], classes)
    real, _ = evaluate_tasks.mean_iou(pixels(val["image"]), val["segmentation"], classes)
    shifted, _ = evaluate_tasks.mean_iou(pixels(val["image"]), np.roll(val["segmentation"], 1, axis=0), classes)
    figures[f"{side}px"] = {"mean_iou": miou, "iou_per_class": per_class, "mean_iou_real_images": real,
                            "mean_iou_other_images_map": shifted, "samples": int(len(images))}
    rows = min(8, count)
    grid.append((evaluate_tasks.colourize(val["segmentation"][:rows]), images[:rows]))
  if jax.process_index() == 0:
    for multiplier, (maps, images) in zip(config.evaluate.size_multipliers, grid):
      image_grid.save_grid(np.concatenate([maps, images]), rows=2, path=workdir / f"samples_{multiplier}x.png")
  sizes = [f"{config.data.image_size * m}px" for m in config.evaluate.size_multipliers]
  return {"mean_iou": figures[sizes[0]]["mean_iou"], "mean_iou_at_largest": figures[sizes[-1]]["mean_iou"],
          "sizes": figures, "sampler": f"{config.sample.sampler} {config.sample.num_steps} steps"}
