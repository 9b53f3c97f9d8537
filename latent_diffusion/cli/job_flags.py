"""Command-line flags shared by the jobs that can run on several hosts (train, encode), and how they end on bad input."""

import contextlib

from absl import flags

from latent_diffusion import parallel, workdir_lock
from latent_diffusion.training import checkpoint, loop

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool("auto_distributed", False,
                                      "Let JAX detect the cluster (Cloud TPU pod, SLURM, MPI, Kubernetes).")


def initialize_distributed() -> None:
  """Joins the multi-host runtime as the flags say (a no-op for a single process)."""
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO_DISTRIBUTED.value)


# Errors that mean "the input or the setup is wrong" (their messages say what, where and what to do).
USER_ERRORS = (ValueError, FileNotFoundError, workdir_lock.WorkdirInUseError, checkpoint.NoUsableCheckpointError,
               loop.NonFiniteError)


@contextlib.contextmanager
def user_errors_as_messages():
  """Ends the job with the message of a USER_ERRORS error (exit code 1) instead of a traceback through the
  library; with --verbosity given, the traceback is shown as well."""
  try:
    yield
  except USER_ERRORS as error:
    if flags.FLAGS["verbosity"].present:
      raise
    raise SystemExit(f"{type(error).__name__}: {error}\n(--verbosity=0 shows the traceback)") from None
