"""Evaluation of a text-to-image model on digit pairs: is each half the digit the prompt asked for?

The digits classifier of the class quickstart (an RBF SVM on the real training digits) judges the left
and the right half of every generated [S, 2S] image; a sample counts when both halves are right. Three
prompt sets ask three questions: training pairs in training templates (did it learn?), held-out pairs
(does it compose digits and positions it never saw together?), held-out templates (does it read
sentences it never saw?). Real validation pairs give the judge's ceiling, and the same prompts at
guidance 1.0 show what classifier-free guidance adds. A grid with the prompts goes to
workdir/samples.png.
"""

import pathlib

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from latent_diffusion import data, evaluate, generation
from latent_diffusion.data import digit_pairs
from latent_diffusion.training import ldm


def prompt_set(pairs, templates, count: int) -> tuple[list[str], np.ndarray]:
  """`count` prompts cycling through every pair, each pair through the templates; (prompts, pairs int [N, 2])."""
  chosen = [(pairs[i % len(pairs)], templates[(i // len(pairs) + i) % len(templates)]) for i in range(count)]
  return [digit_pairs.caption(t, l, r) for (l, r), t in chosen], np.array([p for p, _ in chosen], np.int32)


def both_correct(classifier, images: np.ndarray, pairs: np.ndarray) -> float:
  """Fraction of images [N, S, 2S, 1] in [0, 1] whose left and right halves are judged pairs[:, 0] and [:, 1]."""
  size = images.shape[1]
  halves = [images[:, :, :size], images[:, :, size:]]
  predicted = [classifier.predict((h * 2.0 - 1.0).reshape(len(h), -1)) for h in halves]   # data pixels in [-1, 1]
  return float(np.mean((predicted[0] == pairs[:, 0]) & (predicted[1] == pairs[:, 1])))


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


def evaluate_pairs(config, workdir: pathlib.Path, mesh) -> dict:
  """Both-halves-correct rates of the three prompt sets, with and without guidance; writes samples.png."""
  options = config.evaluate.digit_pairs
  digits_config = ml_collections.ConfigDict(config.data.to_dict())
  digits_config.update(name="digits", image_width=None)
  classifier, _ = evaluate.train_classifier(digits_config)
  real = list(data.make_dataset(config.data, "val"))
  real_images = (np.stack([e["image"] for e in real]) + 1.0) / 2.0
  ceiling = both_correct(classifier, real_images, np.stack([e["label"] for e in real]))

  heldout = digit_pairs.heldout_pairs(config.data.digit_pairs.heldout_pairs, config.data.digit_pairs.seed)
  seen = digit_pairs.train_pairs(config.data.digit_pairs.heldout_pairs, config.data.digit_pairs.seed)
  sets = {"seen_pairs": (seen, digit_pairs.TRAIN_TEMPLATES, options.samples_seen_pairs),
          "heldout_pairs": (heldout, digit_pairs.TRAIN_TEMPLATES, options.samples_heldout_pairs),
          "heldout_templates": (seen, digit_pairs.HELDOUT_TEMPLATES, options.samples_heldout_templates)}
  generator = generation.Generator(ldm.load_trained(workdir, mesh, config))
  figures, grid = {"both_correct_real_pairs": ceiling}, []
  for scale in (config.sample.guidance_scale, 1.0):
    results = {}
    for k, (name, (pairs, templates, count)) in enumerate(sets.items()):
      prompts, wanted = prompt_set(pairs, templates, count)
      images = generation.generate_in_batches(generator, {"prompt": prompts}, config.sample.batch_size,
                                              seed=config.seed + 3 + k,
                                              **evaluate.sample_settings(config, guidance_scale=scale))
      results[f"both_correct_{name}"] = both_correct(classifier, images, wanted)
      if scale == config.sample.guidance_scale:
        grid += [(image, prompt) for image, prompt in list(zip(images, prompts))[:options.grid_rows_per_set]]
    if scale == config.sample.guidance_scale:
      figures.update(results)
    else:
      figures["guidance_1"] = results
  if jax.process_index() == 0:
    prompt_grid(np.stack([g[0] for g in grid]), [g[1] for g in grid], workdir / "samples.png")
  figures.update(guidance_scale=config.sample.guidance_scale,
                 samples={name: count for name, (_, _, count) in sets.items()},
                 sampler=f"{config.sample.sampler} {config.sample.num_steps} steps")
  return figures
