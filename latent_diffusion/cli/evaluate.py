"""Evaluates a trained run: its `evaluate` stage alone (config.evaluate.evals on the EMA weights), the
`ldm-evaluate` console script; the figures go to the run's metrics.json.

  ldm-evaluate --config=configs/quickstart.py --workdir=runs/quickstart [--config.evaluate.samples_per_class=100]
  (= ldm-train with --config.stages="('evaluate',)"; or python -m latent_diffusion.cli.evaluate)
"""

from absl import app, flags

from latent_diffusion import cli, configuration
from latent_diffusion.cli import train

flags.adopt_module_key_flags(train)   # --workdir and the multi-host flags are this job's too


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = configuration.parsed_config()
  config.stages = ("evaluate",)
  train.run_experiment(config)


def run():
  """The `ldm-evaluate` console script."""
  cli.run_main(main, __name__, configuration.flags_parser)


if __name__ == "__main__":
  run()
