"""The `evaluate` stage: every evaluator of config.evaluate.evals on the trained run's EMA weights.

The evaluators (FID, KID, IS, precision/recall, CLIP score, reconstruction, classifier accuracy, memorization,
the sample grid) live in latent_diffusion.evaluation; this module wires them to a trained workdir.
"""

import functools
import pathlib

from latent_diffusion.evaluation import generation, runner
from latent_diffusion.training import autoencoder

# Re-exported: the CLIs and tests build the trained run's sampler through it.
load_generator = generation.load_generator


def trained_generator_fn(config, workdir: pathlib.Path, mesh):
  """guidance scale (None: config.sample's) -> the trained run's Generator (loaded once per scale)."""
  @functools.cache
  def generator(guidance_scale: float | None) -> generation.Generator:
    sample_config = config.copy_and_resolve_references()
    if guidance_scale is not None:
      sample_config.sample.guidance_scale = guidance_scale
    return generation.Generator(*load_generator(sample_config, workdir, mesh))
  return generator


def evaluate(config, workdir: pathlib.Path, mesh) -> dict:
  """Runs config.evaluate.evals; failed evaluators are listed under 'errors' with the reason."""
  ctx = runner.EvalContext(config, workdir, mesh, trained_generator_fn(config, workdir, mesh),
                           functools.cache(lambda: autoencoder.load_params(config, workdir, mesh)),
                           config.evaluate.samples_per_class)
  figures, errors = runner.run(ctx, list(config.evaluate.evals))
  figures.update(generated_samples_per_class=config.evaluate.samples_per_class,
                 guidance_scale=config.sample.guidance_scale,
                 sampler=f"{config.sample.sampler} {config.sample.num_steps} steps eta={config.sample.eta}")
  return {**figures, "errors": errors} if errors else figures
