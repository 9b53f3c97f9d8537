"""Joining JAX's multi-controller runtime (one process per host, XLA collectives between them)."""

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """Calls jax.distributed.initialize from explicit settings, or lets JAX detect the cluster.

  `auto` covers Cloud TPU pods, SLURM (srun), Open MPI and Kubernetes, where JAX reads the
  coordinator, process count and id from the environment. Without either, runs single-process.
  CPU devices talk through gloo (the other platforms ignore that setting).
  """
  if coordinator_address is None and not auto:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
