"""The `evaluate` stage: every evaluator of config.evaluate.evals on the trained run's EMA weights.

The evaluators (FID, KID, IS, precision/recall, CLIP score, reconstruction, classifier accuracy, memorization,
the sample grid) live in latent_diffusion.evaluation; this module wires them to a trained workdir.
"""

import functools
import pathlib

from latent_diffusion.evaluation import generation, runner

# Re-exported: the CLIs and tests build the trained run's sampler through it.
load_generator = generation.load_generator


def evaluate(config, workdir: pathlib.Path, mesh) -> dict:
  """Runs config.evaluate.evals; failed evaluators are listed under 'errors' with the reason."""
  trained = functools.cache(lambda: generation.load_trained(config, workdir, mesh))
  generator_fn = functools.cache(lambda g: trained().generator(generation.with_guidance(config, g)))
  ctx = runner.EvalContext(config, workdir, mesh, generator_fn, lambda: (trained().ae, trained().ae_params),
                           config.evaluate.samples_per_class)
  figures, errors = runner.run(ctx, list(config.evaluate.evals))
  figures.update(generated_samples=config.evaluate.samples_per_class * config.data.num_classes,
                 guidance_scale=config.sample.guidance_scale,
                 sampler=f"{config.sample.sampler} {config.sample.num_steps} steps eta={config.sample.eta}")
  return {**figures, "errors": errors} if errors else figures
