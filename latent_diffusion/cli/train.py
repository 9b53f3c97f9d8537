"""Runs an experiment's stages (train autoencoder, train LDM, evaluate): the `ldm-train` console script.

  ldm-train --config=configs/quickstart.py --workdir=runs/quickstart [--config.ldm.loop.train_steps=1000 ...]
  (or python -m latent_diffusion.cli.train with the same arguments)

Rerunning the same command resumes from the latest checkpoints (a finished stage is skipped). The console shows
one progress line per log interval and a summary on stdout at the end; --verbosity=0 shows every INFO log.
"""

import pathlib

import jax
from absl import app, flags

from latent_diffusion import cli, configuration, console, experiment
from latent_diffusion.cli import job_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and metrics.json.",
                               required=True)


def run_experiment(config) -> None:
  """Runs config.stages in --workdir; prints the summary (process 0)."""
  console.configure_logging()
  job_flags.initialize_distributed()
  with job_flags.user_errors_as_messages():
    metrics = experiment.run(config, _WORKDIR.value)
  if jax.process_index() == 0:
    print(experiment.summary(metrics, pathlib.Path(_WORKDIR.value)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_experiment(configuration.parsed_config())


def run():
  """The `ldm-train` console script."""
  cli.run_main(main, __name__, configuration.flags_parser, own_allocator=True)


if __name__ == "__main__":
  run()
