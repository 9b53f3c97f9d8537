"""Evaluation of a trained class-conditional LDM: a sample grid and classifier accuracy.

A digits classifier (an RBF SVM, trained on the real training split) judges each generated image
against the class it was conditioned on; its accuracy on the real validation split is reported
beside it as the ceiling.
"""

import pathlib

import jax
import numpy as np

from latent_diffusion import data, generation, image_grid
from latent_diffusion.training import ldm


def train_classifier(data_config):
  """(classifier, accuracy on the real validation split) for images of `data_config` (config.data)."""
  from sklearn.svm import SVC

  def arrays(split):
    examples = list(data.make_dataset(data_config, split))
    return (np.stack([e["image"] for e in examples]).reshape(len(examples), -1),
            np.array([e["label"] for e in examples]))

  train_x, train_y = arrays("train")
  val_x, val_y = arrays("val")
  classifier = SVC(gamma="scale", C=10.0).fit(train_x, train_y)
  return classifier, float((classifier.predict(val_x) == val_y).mean())


def sample_settings(config, **overrides) -> dict:
  """Generator keyword arguments of config.sample (overrides win)."""
  s = config.sample
  return {"num_steps": s.num_steps, "guidance_scale": s.guidance_scale, **overrides}


def generate_per_class(config, workdir: pathlib.Path, mesh, samples_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(images [num_classes * n, H, W, C] in [0, 1], labels) with n = samples_per_class, class-major."""
  generator = generation.Generator(ldm.load_trained(workdir, mesh, config))
  labels = np.repeat(np.arange(config.data.num_classes), samples_per_class).astype(np.int32)
  images = generation.generate_in_batches(generator, {"label": labels}, config.sample.batch_size, seed=seed,
                                          **sample_settings(config))
  return images, labels


def evaluate(config, workdir: pathlib.Path, mesh) -> dict:
  """The evaluation config.evaluate.task names (default: config.data.name's); writes workdir/samples*.png."""
  from latent_diffusion import (evaluate_inpainting, evaluate_layout, evaluate_pairs, evaluate_semantic,
                                evaluate_super_resolution)

  evaluations = {"digits": evaluate_classes, "digit_pairs": evaluate_pairs.evaluate_pairs,
                 "inpainting": evaluate_inpainting.evaluate_inpainting, "semantic": evaluate_semantic.evaluate_semantic,
                 "layout": evaluate_layout.evaluate_layout,
                 "super_resolution": evaluate_super_resolution.evaluate_super_resolution}
  task = config.evaluate.task or config.data.name
  if task not in evaluations:
    raise ValueError(f"No evaluation {task!r} (config.evaluate.task, else config.data.name); evaluations exist for "
                     f"{sorted(evaluations)}.")
  return evaluations[task](config, workdir, mesh)


def evaluate_classes(config, workdir: pathlib.Path, mesh) -> dict:
  """Writes workdir/samples.png (one row per class) and returns the accuracy figures."""
  n = config.evaluate.samples_per_class
  images, labels = generate_per_class(config, workdir, mesh, n, seed=config.seed + 3)
  cols = min(config.evaluate.grid_columns, n)
  grid = images.reshape(config.data.num_classes, n, *images.shape[1:])[:, :cols]
  if jax.process_index() == 0:
    image_grid.save_grid(grid.reshape(-1, *images.shape[1:]), rows=config.data.num_classes, path=workdir / "samples.png")
  classifier, real_accuracy = train_classifier(config.data)
  as_pixels = images * 2.0 - 1.0  # the classifier sees data-set pixels in [-1, 1]
  predicted = classifier.predict(as_pixels.reshape(len(images), -1))
  per_class = [float((predicted[labels == c] == c).mean()) for c in range(config.data.num_classes)]
  return {
      "classifier_val_accuracy_real": real_accuracy,
      "generated_accuracy": float((predicted == labels).mean()),
      "generated_accuracy_per_class": per_class,
      "generated_samples": int(len(images)),
      "guidance_scale": config.sample.guidance_scale,
      "sampler": f"{config.sample.sampler} {config.sample.num_steps} steps eta={config.sample.eta}",
  }
