"""Evaluator 'layout': in images generated from held-out shapes layouts, is the requested shape, in the requested
colour, inside each box?

The layouts of held-out examples (boxes with shape x colour classes) condition the model; the shape judge
(shape_judges.ShapeJudge) checks every box of every generated image. Real held-out images give the judge's
ceiling, real images judged against another image's layout the chance level, and the same layouts at guidance
1.0 what classifier-free guidance adds.
"""

import pathlib

import numpy as np

from latent_diffusion import generation, image_grid
from latent_diffusion.evaluation import conditioned, shape_judges


def evaluate_layout(cfg, results, ctx, suffix: str) -> dict:
  """Fractions of boxes with the right shape and colour; writes workdir/samples<suffix>.png (layouts over images)."""
  config, options = ctx.config, ctx.config.evaluate.tasks
  judge = shape_judges.ShapeJudge(shape_judges.examples(config.data, "train", options.judge_examples))
  val = shape_judges.examples(config.data, "val", options.samples)
  layouts = {"boxes": val["boxes"], "box_labels": val["box_labels"]}
  generator = generation.Generator(ctx.model())
  figures = {}
  for variant, scale in (("", config.sample.guidance_scale), ("no_guidance_", 1.0)):
    images = conditioned.generate(generator, config, layouts, guidance_scale=scale)
    figures.update(judge(conditioned.to_data(images), val["boxes"], val["box_labels"]).summary(f"layout_{variant}"))
    if not variant and ctx.is_writer:
      rows = min(8, len(images))
      image_grid.save_grid(np.concatenate([shape_judges.colourize(val["segmentation"][:rows]), images[:rows]]),
                           rows=2, path=pathlib.Path(ctx.workdir) / f"samples{suffix}.png")
  figures.update(judge(val["image"], val["boxes"], val["box_labels"]).summary("layout_real_images_"))
  figures.update(judge(val["image"], np.roll(val["boxes"], 1, 0), np.roll(val["box_labels"], 1, 0)).summary(
      "layout_other_images_layout_"))
  return conditioned.named(figures, suffix)
