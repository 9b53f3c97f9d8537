"""Preemption: SIGTERM (TPU maintenance, spot VMs, SLURM --signal, Kubernetes eviction) -> one step
every process agrees on -> save there -> exit with PREEMPTED_EXIT_CODE; rerunning the command resumes.

Multi-process runs use JAX's preemption sync service (started by jax.distributed.initialize): a
SIGTERM reaching any one process is broadcast through the coordination service, every process
reports its call count of `reached()`, and all of them stop at the same call, max + 1. A
single-process run has no such service; a Python signal handler sets a flag instead (a second
SIGTERM kills the process as usual, e.g. when no loop is running to honour the first).

Every process must call `reached()` once per collective step (train step, encoder call), in the
same order: the agreement is on the number of calls, counted from the start of the process, so
that successive stages and a resumed step counter cannot step backwards under the protocol.
"""

import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Launchers (SLURM
# requeue, JobSet restarts) rerun a job that exits with it; the rerun resumes from the checkpoint.
PREEMPTED_EXIT_CODE = 75


class Preempted(SystemExit):
  """The job stopped at a step all processes agreed on after SIGTERM, its state saved. A SystemExit
  with code PREEMPTED_EXIT_CODE: no `except Exception` swallows it and the CLIs exit with that code."""

  def __init__(self, what: str, step: int):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.what, self.step = what, step
    logging.warning("%s: preempted (SIGTERM); stopped cleanly at step %d. Rerun the same command to resume "
                    "(exit code %d).", what, step, PREEMPTED_EXIT_CODE)


class _Watch:
  """The process-wide preemption state (one per process: JAX's sync manager is one per process)."""

  def __init__(self):
    self.calls = 0
    self.signalled = threading.Event()
    self.installed = False
    self.service_off = False
    self.preempted = False   # sticky: a later stage of the same job stops at its first step too

  def install(self) -> None:
    """Catches SIGTERM in a single-process run (a multi-process run's is caught by JAX's service)."""
    if self.installed or threading.current_thread() is not threading.main_thread():
      return
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._on_sigterm)
    self.installed = True

  def _on_sigterm(self, signum, frame) -> None:
    del frame
    if self.signalled.is_set():   # a second SIGTERM (nothing stopped after the first): die as usual
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    self.signalled.set()

  def reached(self) -> bool:
    self.calls += 1
    if not self.preempted:
      self.preempted = self._query()
    return self.preempted

  def _query(self) -> bool:
    if jax.process_count() == 1:
      return self.signalled.is_set()
    try:
      return multihost_utils.reached_preemption_sync_point(self.calls)
    except RuntimeError:  # jax_enable_preemption_service is off
      if not self.service_off:
        logging.warning("The JAX preemption service is off (jax_enable_preemption_service): SIGTERM will kill "
                        "this job without a checkpoint.")
        self.service_off = True
      return False


_WATCH = _Watch()


def install() -> None:
  """Starts listening for SIGTERM. Call it early (before data loading and compilation) so that a
  notice arriving then is honoured at the first step. Idempotent."""
  _WATCH.install()


def reached() -> bool:
  """Whether this collective step is the agreed preemption point: save, then raise Preempted.
  Call once per collective step on every process (see the module docstring)."""
  install()
  return _WATCH.reached()
