"""Runs an experiment's stages (train autoencoder, train LDM, evaluate).

  python -m latent_diffusion.train --config=configs/quickstart.py --workdir=runs/quickstart \
      [--config.ldm.loop.train_steps=1000 ...]

Rerunning the same command resumes from the latest checkpoints (a finished stage is skipped). The console shows
one progress line per log interval and a summary on stdout at the end; --verbosity=0 shows every INFO log.
"""

import pathlib

import jax
from absl import app, flags

from latent_diffusion import cli, cli_flags, configuration, console, pipeline

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and metrics.json.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure_logging()
  cli_flags.initialize_distributed()
  with cli_flags.user_errors_as_messages():
    metrics = pipeline.run(configuration.parsed_config(), _WORKDIR.value)
  if jax.process_index() == 0:
    print(pipeline.summary(metrics, pathlib.Path(_WORKDIR.value)))


def run():
  """The `ldm-train` console script."""
  cli.run_main(main, __name__, configuration.flags_parser)


if __name__ == "__main__":
  run()
