"""Command-line flags shared by the jobs that can run on several hosts (train, encode)."""

from absl import flags

from latent_diffusion import parallel

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool("auto_distributed", False,
                                      "Let JAX detect the cluster (Cloud TPU pod, SLURM, MPI, Kubernetes).")


def initialize_distributed() -> None:
  """Joins the multi-host runtime as the flags say (a no-op for a single process)."""
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO_DISTRIBUTED.value)
