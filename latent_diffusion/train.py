"""Runs an experiment's stages (train autoencoder, train LDM, evaluate).

  python -m latent_diffusion.train --config=configs/quickstart.py --workdir=runs/quickstart \
      [--config.ldm.loop.train_steps=1000 ...]

Rerunning the same command resumes from the latest checkpoints.
"""

from absl import app, flags, logging

from latent_diffusion import configuration, parallel, pipeline

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and metrics.json.",
                               required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool("auto_distributed", False,
                                      "Let JAX detect the cluster (Cloud TPU pod, SLURM, MPI, Kubernetes).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO_DISTRIBUTED.value)
  pipeline.run(configuration.parsed_config(), _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=configuration.flags_parser)
