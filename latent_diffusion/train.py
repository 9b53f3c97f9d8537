"""Runs an experiment's stages (train autoencoder, train LDM, evaluate).

  python -m latent_diffusion.train --config=configs/quickstart.py --workdir=runs/quickstart \
      [--config.ldm.loop.train_steps=1000 ...]

Rerunning the same command resumes from the latest checkpoints.
"""

from absl import app, flags, logging

from latent_diffusion import cli, cli_flags, configuration, pipeline

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and metrics.json.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  cli_flags.initialize_distributed()
  pipeline.run(configuration.parsed_config(), _WORKDIR.value)


def run():
  """The `ldm-train` console script."""
  cli.run_main(main, __name__, configuration.flags_parser)


if __name__ == "__main__":
  run()
