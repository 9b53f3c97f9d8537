"""Evaluator 'semantic': mean IoU of images generated from held-out shapes maps, at the training size and larger.

The maps of held-out examples, rendered at each of config.evaluate.tasks.size_multipliers x the training size (the
data set draws the same objects at any resolution), condition the model; a per-pixel colour classifier fit on
real images (shape_judges.PixelClassifier) reads a map back from each generated image, and its mean IoU against
the input map is the figure (real held-out images give the judge's ceiling; a map shifted to another image's,
the score of an image that ignores its map).
"""

import pathlib

import numpy as np

from latent_diffusion import generation, image_grid
from latent_diffusion.data import shapes
from latent_diffusion.evaluation import conditioned, shape_judges


def evaluate_semantic(cfg, results, ctx, suffix: str) -> dict:
  """mIoU of generated images against their maps per size; writes workdir/samples<suffix>_<m>x.png (maps over
  images)."""
  config, options = ctx.config, ctx.config.evaluate.tasks
  classes = shapes.SEGMENTATION_CLASSES
  train = shape_judges.examples(config.data, "train", options.judge_examples)
  pixels = shape_judges.PixelClassifier(train["image"], train["segmentation"])
  generator = generation.Generator(ctx.model())
  figures = {}
  for multiplier in options.size_multipliers:
    side = config.data.image_size * multiplier
    val = shape_judges.examples(config.data, "val", options.samples, side)
    # Bigger images, fewer per call: the same number of pixels per compiled batch.
    batch = max(1, config.sample.batch_size // multiplier**2)
    images = conditioned.generate(generator, config, {"segmentation": val["segmentation"]}, batch)
    miou, per_class = shape_judges.mean_iou(pixels(conditioned.to_data(images)), val["segmentation"], classes)
    real, _ = shape_judges.mean_iou(pixels(val["image"]), val["segmentation"], classes)
    shifted, _ = shape_judges.mean_iou(pixels(val["image"]), np.roll(val["segmentation"], 1, axis=0), classes)
    figures[f"semantic_mean_iou_{side}px"] = miou
    figures[f"semantic_{side}px"] = {"iou_per_class": per_class, "mean_iou_real_images": real,
                                     "mean_iou_other_images_map": shifted, "samples": int(len(images))}
    if ctx.is_writer:
      rows = min(8, len(images))
      image_grid.save_grid(np.concatenate([shape_judges.colourize(val["segmentation"][:rows]), images[:rows]]),
                           rows=2, path=pathlib.Path(ctx.workdir) / f"samples{suffix}_{multiplier}x.png")
  return conditioned.named(figures, suffix)
