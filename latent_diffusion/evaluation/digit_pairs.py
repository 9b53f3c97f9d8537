"""The text quickstart's judge (evaluator type 'digit_pairs'): is each half the digit the prompt asked for?

The digits SVM of the class quickstart (networks.svm_judge, trained on the real single digits) judges the
left and the right half of every generated [S, 2S] image; a sample counts when both halves are right. Three
prompt sets ask three questions: training pairs in training templates (did it learn?), held-out pairs (does it
compose digits and positions it never saw together?), held-out templates (does it read sentences it never
saw?). Real validation pairs give the judge's ceiling, and the same prompts at guidance 1.0 show what
classifier-free guidance adds. A grid of samples with their prompts goes to workdir/samples.png.
"""

import pathlib

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from latent_diffusion import generation
from latent_diffusion.data import digit_pairs
from latent_diffusion.evaluation import networks


def prompt_set(pairs, templates, count: int) -> tuple[list[str], np.ndarray]:
  """`count` prompts cycling through every pair, each pair through the templates; (prompts, pairs int [N, 2])."""
  chosen = [(pairs[i % len(pairs)], templates[(i // len(pairs) + i) % len(templates)]) for i in range(count)]
  return [digit_pairs.caption(t, l, r) for (l, r), t in chosen], np.array([p for p, _ in chosen], np.int32)


def both_correct(predict, images: np.ndarray, pairs: np.ndarray) -> float:
  """Fraction of images [N, S, 2S, C] in [0, 1] whose halves are judged pairs[:, 0] (left) and [:, 1] (right)."""
  size = images.shape[1]
  left, right = predict(images[:, :, :size]), predict(images[:, :, size:])
  return float(np.mean((left == pairs[:, 0]) & (right == pairs[:, 1])))


def prompt_grid(images: np.ndarray, prompts: list[str], path: pathlib.Path, upscale: int = 4) -> None:
  """One row per image: the prompt, then the image upscaled."""
  text_width, h, w = 300, images.shape[1] * upscale, images.shape[2] * upscale
  canvas = Image.new("L", (text_width + w, h * len(images)), 255)
  draw = ImageDraw.Draw(canvas)
  for i, (image, prompt) in enumerate(zip(images, prompts)):
    pixels = (np.clip(image[..., 0], 0, 1) * 255 + 0.5).astype(np.uint8).repeat(upscale, 0).repeat(upscale, 1)
    canvas.paste(Image.fromarray(pixels), (text_width, i * h))
    draw.text((4, i * h + h // 3), prompt, fill=0)
  canvas.save(path)


def evaluate_digit_pairs(cfg, results, ctx, suffix: str) -> dict:
  """Both-halves-correct rates of the three prompt sets at config.sample.guidance_scale and at 1.0."""
  config, options = ctx.config, ctx.config.evaluate.digit_pairs
  digits = ml_collections.ConfigDict(config.data.to_dict())
  digits.update(name="digits", image_width=None)
  predict, _ = networks.svm_judge(digits, config.evaluate.svm_judge.C)
  real_images, real_pairs = networks.real_data_split(config.data, "val")
  pairs_cfg = config.data.digit_pairs
  seen = digit_pairs.train_pairs(pairs_cfg.heldout_pairs, pairs_cfg.seed)
  sets = {"seen_pairs": (seen, digit_pairs.TRAIN_TEMPLATES, options.samples_seen_pairs),
          "heldout_pairs": (digit_pairs.heldout_pairs(pairs_cfg.heldout_pairs, pairs_cfg.seed),
                            digit_pairs.TRAIN_TEMPLATES, options.samples_heldout_pairs),
          "heldout_templates": (seen, digit_pairs.HELDOUT_TEMPLATES, options.samples_heldout_templates)}
  generator = generation.Generator(ctx.model())
  figures = {f"both_correct_real_pairs{suffix}": both_correct(predict, real_images, real_pairs)}
  grid = []
  for scale, variant in ((config.sample.guidance_scale, ""), (1.0, "_no_guidance")):
    for k, (name, (pairs, templates, count)) in enumerate(sets.items()):
      prompts, wanted = prompt_set(pairs, templates, count)
      images = generation.generate_in_batches(generator, {"prompt": prompts}, config.sample.batch_size,
                                              seed=config.evaluate.seed + k, num_steps=config.sample.num_steps,
                                              guidance_scale=scale)
      figures[f"both_correct_{name}{variant}{suffix}"] = both_correct(predict, images, wanted)
      if not variant:
        grid += list(zip(images, prompts))[:options.grid_rows_per_set]
  if ctx.is_writer:
    prompt_grid(np.stack([g[0] for g in grid]), [g[1] for g in grid], pathlib.Path(ctx.workdir) / f"samples{suffix}.png")
  figures[f"digit_pairs_samples{suffix}"] = {name: count for name, (_, _, count) in sets.items()}
  return figures
