"""The `evaluate` stage: every evaluator of config.evaluate.evals on the trained run's EMA weights.

The evaluators (FID, KID, IS, precision/recall, CLIP score, reconstruction, classifier accuracy, memorization,
the sample grid, the text quickstart's digit-pair judge) live in latent_diffusion.evaluation; this module wires
them to a trained workdir.
"""

import functools
import pathlib

from latent_diffusion.evaluation import generation, runner
from latent_diffusion.training import ldm


def evaluate(config, workdir: pathlib.Path, mesh) -> dict:
  """Runs config.evaluate.evals; failed evaluators are listed under 'errors' with the reason."""
  model = functools.cache(lambda: ldm.load_trained(workdir, mesh, config))
  sampler_fn = functools.cache(lambda guidance: generation.sampler(model(), config, guidance))
  ctx = runner.EvalContext(config, workdir, mesh, sampler_fn, lambda: (model().autoencoder, model().params["autoencoder"]),
                           config.evaluate.samples_per_class, model_fn=model)
  figures, errors = runner.run(ctx, list(config.evaluate.evals))
  figures.update(guidance_scale=config.sample.guidance_scale,
                 sampler=f"{config.sample.sampler} {config.sample.num_steps} steps eta={config.sample.eta}")
  return {**figures, "errors": errors} if errors else figures
