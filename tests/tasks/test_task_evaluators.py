"""The task judges and evaluators.

The judges cannot be fooled: on real held-out shapes they find what the ground truth says (their ceiling), and
a condition that does not belong to the image (another image's layout or map, half an object erased) scores far
lower. The four task evaluators (inpainting, semantic, layout, super_resolution) run by name through the
evaluation registry on untrained models of their task (wiring, figure names, sample grids, larger sizes)."""

import jax
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from latent_diffusion import parallel
from latent_diffusion.configs.base import evaluator
from latent_diffusion.data import shapes
from latent_diffusion.evaluation import inpainting, runner, shape_judges
from tests.conftest import tiny_config
from tests.tasks.bundles import random_bundle

SIDE = 32


@pytest.fixture(scope="module")
def shapes_data():
  data_config = tiny_config("data.name=shapes", f"data.image_size={SIDE}").data
  return shape_judges.examples(data_config, "train", 400), shape_judges.examples(data_config, "val", 150)


def test_shape_judge_ceiling_and_what_it_refuses(shapes_data):
  train, val = shapes_data
  judge = shape_judges.ShapeJudge(train)
  real = judge(val["image"], val["boxes"], val["box_labels"]).summary()
  other = judge(val["image"], np.roll(val["boxes"], 1, 0), np.roll(val["box_labels"], 1, 0)).summary()
  masks, chosen = inpainting.half_box_masks(val["boxes"], val["box_labels"], SIDE, seed=0)
  one = lambda a: a[np.arange(len(a)), chosen][:, None]
  holes = val["image"] * (1.0 - masks[..., None])
  half = judge(holes, one(val["boxes"]), one(val["box_labels"])).summary()
  whole = judge(val["image"], one(val["boxes"]), one(val["box_labels"])).summary()
  print(f"shape judge both_correct: real {real['both_correct']:.3f}, other layouts {other['both_correct']:.3f}, "
        f"half-erased objects {half['both_correct']:.3f} (the same objects whole {whole['both_correct']:.3f})")
  assert real["both_correct"] >= 0.95 and whole["both_correct"] >= 0.95
  assert other["both_correct"] <= 0.25 and half["both_correct"] <= 0.3
  # Softer edges (a decoder's) are judged by the shape: fit on sharp images only, sigma 0.8 gave 0.42.
  blurred = judge(gaussian_filter(val["image"], sigma=(0, 0.8, 0.8, 0)), val["boxes"], val["box_labels"]).summary()
  assert blurred["both_correct"] >= 0.9


def test_pixel_classifier_mean_iou(shapes_data):
  train, val = shapes_data
  pixels = shape_judges.PixelClassifier(train["image"], train["segmentation"])
  classes = shapes.SEGMENTATION_CLASSES
  real, per_class = shape_judges.mean_iou(pixels(val["image"]), val["segmentation"], classes)
  shifted, _ = shape_judges.mean_iou(pixels(val["image"]), np.roll(val["segmentation"], 1, 0), classes)
  print(f"pixel classifier mIoU: real {real:.3f} {np.round(per_class, 3)}, other images' maps {shifted:.3f}")
  assert real >= 0.97 and shifted <= 0.35


_TASKS = {
    "inpainting": ("data.name=shapes", "ldm.conditioning.kinds=('inpaint',)"),
    "semantic": ("data.name=shapes", "ldm.conditioning.kinds=('segmentation',)"),
    "layout": ("data.name=shapes", "data.num_classes=12", "ldm.conditioning.kinds=('layout',)",
               "ldm.conditioning.layout.width=16", "ldm.conditioning.layout.layers=1",
               "ldm.conditioning.layout.heads=2"),
    # One size: its 2x path is the semantic one's (and costs another compile).
    "super_resolution": ("data.name=photo_crops", "data.val_examples=4", "ldm.conditioning.kinds=('low_res',)",
                         "ldm.conditioning.low_res.residual=True", "evaluate.tasks.size_multipliers=(1,)"),
}


@pytest.mark.parametrize("task", sorted(_TASKS))
def test_task_evaluator_runs_by_name(task, tmp_path):
  config = tiny_config(*_TASKS[task], "autoencoder.model.in_channels=3", "sample.num_steps=2", "sample.batch_size=4",
                       "evaluate.tasks.samples=4", "evaluate.tasks.judge_examples=60")
  config.evaluate.evals = {task: evaluator(task)}
  model = random_bundle(config)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
  ctx = runner.EvalContext(config, tmp_path, mesh, lambda guidance: None, lambda: None, 1, model_fn=lambda: model)
  figures, errors = runner.run(ctx, [task])
  assert not errors
  side = config.data.image_size
  expected = {"inpainting": ["inpainting_object_both_correct", "inpainting_known_region_mse"],
              "semantic": [f"semantic_mean_iou_{side}px", f"semantic_mean_iou_{2 * side}px"],
              "layout": ["layout_both_correct", "layout_no_guidance_both_correct", "layout_real_images_both_correct"],
              "super_resolution": [f"super_resolution_{name}_{metric}_{side}px" for name in ("model", "bicubic",
                                                                                             "autoencoder")
                                   for metric in ("psnr_db", "ssim")]}[task]
  for name in expected:
    assert np.isfinite(figures[name]), (name, figures)
  grids = {"inpainting": ["samples.png"], "layout": ["samples.png"], "semantic": ["samples_1x.png", "samples_2x.png"],
           "super_resolution": ["samples_1x.png"]}[task]
  assert all((tmp_path / g).exists() for g in grids)
  if task == "inpainting":
    # The real images' objects are judged whole; the masked inputs' are not; each verdict judges every object.
    judged = figures["inpainting_judge"]
    assert judged["real"]["both_correct"] == 1.0 > judged["masked_input"]["both_correct"]
    assert {v["objects"] for v in judged.values()} == {judged["real"]["objects"]} and len(judged) == 5
  if task == "super_resolution":
    assert figures[f"super_resolution_bicubic_psnr_db_{side}px"] > 15
