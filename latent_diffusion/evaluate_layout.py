"""Evaluation of a layout-to-image model on held-out shapes layouts: is the requested shape, in the requested
colour, inside each box?

The layouts of held-out examples (boxes with shape x colour classes) condition the model; the shape judge
(latent_diffusion.evaluate_tasks.ShapeJudge) checks every box of every generated image. Real held-out images
give the judge's ceiling, real images judged against another image's layout the chance level, and the same
layouts at guidance 1.0 what classifier-free guidance adds.
"""

import pathlib

import jax
import numpy as np

from latent_diffusion import evaluate, evaluate_tasks, generation, image_grid
from latent_diffusion.training import ldm


def evaluate_layout(config, workdir: pathlib.Path, mesh) -> dict:
  """Fractions of boxes with the right shape and colour; writes workdir/samples.png (layouts over images)."""
  count = config.evaluate.task_samples
  judge = evaluate_tasks.ShapeJudge(evaluate_tasks.examples(config.data, "train", 1000))
  val = evaluate_tasks.examples(config.data, "val", count)
  layouts = {"boxes": val["boxes"], "box_labels": val["box_labels"]}
  generator = generation.Generator(ldm.load_trained(workdir, mesh, config))
  figures = {}
  for name, scale in (("", config.sample.guidance_scale), ("guidance_1_", 1.0)):
    images = generation.generate_in_batches(generator, layouts, config.sample.batch_size, seed=config.seed + 3,
                                            **evaluate.sample_settings(config, guidance_scale=scale))
    figures.update(judge(evaluate_tasks.to_data(images), val["boxes"], val["box_labels"]).summary(name))
    if not name and jax.process_index() == 0:
      rows = min(8, count)
      image_grid.save_grid(np.concatenate([evaluate_tasks.colourize(val["segmentation"][:rows]), images[:rows]]),
                           rows=2, path=workdir / "samples.png")
  figures.update(judge(val["image"], val["boxes"], val["box_labels"]).summary("real_images_"))
  figures.update(judge(val["image"], np.roll(val["boxes"], 1, 0), np.roll(val["box_labels"], 1, 0)).summary(
      "other_images_layout_"))
  return {**figures, "guidance_scale": config.sample.guidance_scale, "samples": int(count),
          "sampler": f"{config.sample.sampler} {config.sample.num_steps} steps"}
