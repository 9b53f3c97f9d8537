"""Evaluator 'inpainting': is the filled region of held-out coloured shapes right, and is the known region kept?

For each held-out image, one side (left, right, top or bottom half, chosen at random) of one of its objects' box
is masked; the model fills it. The shape judge (shape_judges.ShapeJudge) asks whether that object is the right
shape in the right colour, on the inpainted image, on the real image (ceiling), on the autoencoder's
reconstruction (whole, and pasted into the hole with the real pixels around it: the ceiling of paste_known sampling
through this decoder), and on the masked input with the hole left grey (what the visible half alone scores: a model
that pastes the input back cannot pass). The known region's mean squared error (pixels in [0, 1]) is set
against the autoencoder's own reconstruction error on the same pixels.
"""

import pathlib

import numpy as np

from latent_diffusion import generation, image_grid
from latent_diffusion.evaluation import conditioned, shape_judges


def half_box_masks(boxes: np.ndarray, labels: np.ndarray, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(masks float32 [N, S, S] with 1 over one half of one object's box, the object index of each image)."""
  rng = np.random.default_rng(seed)
  masks, chosen = np.zeros((len(boxes), side, side), np.float32), []
  for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
    k = int(rng.choice(np.flatnonzero(image_labels >= 0)))
    x0, y0, x1, y1 = (int(round(v * side)) for v in image_boxes[k])
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    half = [(slice(y0, y1), slice(x0, xm)), (slice(y0, y1), slice(xm, x1)), (slice(y0, ym), slice(x0, x1)),
            (slice(ym, y1), slice(x0, x1))][int(rng.integers(4))]
    masks[(i, *half)] = 1.0
    chosen.append(k)
  return masks, np.array(chosen)


def evaluate_inpainting(cfg, results, ctx, suffix: str) -> dict:
  """Object accuracy of the filled region and known-region error; writes workdir/samples<suffix>.png."""
  config, options = ctx.config, ctx.config.evaluate.tasks
  judge = shape_judges.ShapeJudge(shape_judges.examples(config.data, "train", options.judge_examples))
  val = shape_judges.examples(config.data, "val", options.samples)
  masks, chosen = half_box_masks(val["boxes"], val["box_labels"], config.data.image_size, config.evaluate.seed)
  one = lambda a: a[np.arange(len(a)), chosen][:, None]                    # the masked object of each image
  boxes, labels = one(val["boxes"]), one(val["box_labels"])

  model = ctx.model()
  images = conditioned.generate(generation.Generator(model), config, {"image": val["image"], "mask": masks})
  inpainted = conditioned.to_data(images)
  reconstructed = conditioned.reconstruct(model, val["image"])
  holes = val["image"] * (1.0 - masks[..., None])
  # The ceiling of paste_known sampling through this decoder: the reconstruction in the hole, real pixels around it.
  reconstructed_pasted = masks[..., None] * reconstructed + (1.0 - masks[..., None]) * val["image"]
  verdicts = {name: judge(x, boxes, labels).summary() for name, x in
              (("inpainted", inpainted), ("real", val["image"]), ("reconstructed", reconstructed),
               ("reconstructed_pasted", reconstructed_pasted), ("masked_input", holes))}
  known = (1.0 - masks)[..., None]
  error = lambda x: float(np.sum(known * np.square((x - val["image"]) / 2.0)) / (np.sum(known) * x.shape[-1]))
  if ctx.is_writer:
    rows = min(8, len(images))
    grid = np.stack([conditioned.to_unit(holes[:rows]), images[:rows], conditioned.to_unit(val["image"][:rows])],
                    axis=1)
    image_grid.save_grid(grid.reshape(-1, *images.shape[1:]), rows=rows,
                         path=pathlib.Path(ctx.workdir) / f"samples{suffix}.png")
  return conditioned.named({
      "inpainting_object_both_correct": verdicts["inpainted"]["both_correct"],
      "inpainting_judge": verdicts,
      "inpainting_known_region_mse": error(inpainted),
      "inpainting_known_region_mse_autoencoder": error(reconstructed),
      "inpainting_masked_fraction": float(masks.mean()),
      "inpainting_samples": int(len(images)),
      "inpainting_keep_known": bool(config.ldm.conditioning.inpaint.keep_known),
      "inpainting_paste_known": bool(config.ldm.conditioning.inpaint.paste_known),
  }, suffix)
