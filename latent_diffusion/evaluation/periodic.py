"""Evaluation during stage-2 training: config.evaluate.during_training on the EMA weights of the current state.

The loop calls the returned eval_fn every ldm.loop.eval_every_steps; its float figures go to TensorBoard
(val/<name>), so does the grid of the 'sample_grid' evaluator (as an image), and every call's figures (with errors, if any) to the returned history, which the stage writes
to metrics.json. A failing evaluator never stops training: its error is recorded and training goes on.
"""

import logging
import pathlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from latent_diffusion.evaluation import generation, runner


def training_eval_fn(config, workdir: pathlib.Path, mesh, model_fn: Callable) -> tuple[Callable | None, list[dict]]:
  """(eval_fn(state) -> {name: float} or None if no evaluator is configured, the history it appends to).

  model_fn(state) -> the LatentDiffusion bundle of the state's EMA weights.
  """
  names = list(config.evaluate.during_training)
  history: list[dict] = []
  if not names:
    return None, history
  network_cache: dict = {}  # feature networks (e.g. the trained digits CNN) are built once per training run

  def eval_fn(state) -> dict:
    step = int(state.step)
    try:
      model = model_fn(state)
      samplers = {}
      sampler_fn = lambda g: samplers.setdefault(g, generation.sampler(model, config, g))
      ctx = runner.EvalContext(config, workdir, mesh, sampler_fn, lambda: (model.autoencoder, model.params["autoencoder"]),
                               config.evaluate.training_samples_per_class, network_cache, model_fn=lambda: model)
      figures, errors = runner.run(ctx, names)
    except Exception as e:  # pylint: disable=broad-except
      figures, errors = {}, {"during_training": f"{type(e).__name__}: {e}"}
      logging.error("Evaluation at step %d failed; training goes on: %s", step, errors["during_training"])
    history.append({"step": step, **figures, **({"errors": errors} if errors else {})})
    scalars = {k: v for k, v in figures.items() if isinstance(v, float) and not k.startswith("time_s/")}
    grids = {k: _png_batch(pathlib.Path(workdir) / v) for k, v in figures.items()
             if k.startswith("sample_grid") and (pathlib.Path(workdir) / v).is_file()}
    return {**scalars, **grids}   # grids [1, H, W, C] in [0, 1]: TensorBoard images

  return eval_fn, history


def _png_batch(path: pathlib.Path) -> np.ndarray:
  """[1, H, W, C] float32 in [0, 1] of a PNG (the sample grid the sample_grid evaluator wrote)."""
  image = np.asarray(Image.open(path), np.float32) / 255.0
  return (image[..., None] if image.ndim == 2 else image)[None]
