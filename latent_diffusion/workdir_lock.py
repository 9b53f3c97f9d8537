"""One job per workdir: `<dir>/lock` is held (flock) by process 0 for the life of the job.

The lock file names its holder (host, pid, start time). The kernel releases the flock when the
holder exits in any way, SIGKILL included, so a lock left behind by a killed job is recognised as
stale (the flock is free but the file still names a holder) and taken over with a warning; a clean
exit empties the file. A second job on a workdir in use refuses at start, naming the holder. On a
filesystem shared by several hosts the flock needs lock support (NFSv4 and Lustre have it; object
stores such as GCS do not, and there the lock only guards jobs started on the same host).
"""

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_NAME = "lock"


class WorkdirInUseError(RuntimeError):
  """Another job holds the workdir (its host and pid are in the message)."""


def _holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors="replace").strip()
  try:
    holder = json.loads(text) if text else {}
  except ValueError:
    holder = {"unreadable": text[:80]}
  return holder if isinstance(holder, dict) else {"unreadable": text[:80]}


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"
          if "unreadable" not in holder else f"unreadable holder record {holder['unreadable']!r}")


def _acquire(directory: pathlib.Path, what: str) -> int:
  """The locked file descriptor, or WorkdirInUseError naming the holder."""
  directory.mkdir(parents=True, exist_ok=True)
  fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    holder = _holder(fd)
    os.close(fd)
    raise WorkdirInUseError(f"{directory} is in use by another {what} ({_describe(holder)}): one job per workdir. "
                            f"Wait for it to finish or stop it, or use another directory.") from None
  stale = _holder(fd)
  if stale:
    logging.warning("%s: taking over a stale lock of a job that did not exit cleanly (%s).", directory,
                    _describe(stale))
  record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
  os.ftruncate(fd, 0)
  os.pwrite(fd, record.encode(), 0)
  os.fsync(fd)
  return fd


@contextlib.contextmanager
def hold(directory: str | pathlib.Path, what: str = "job"):
  """Holds `directory` for the body of the `with`; every process raises WorkdirInUseError if it is held."""
  directory = pathlib.Path(directory)
  fd, error = None, None
  if jax.process_index() == 0:
    try:
      fd = _acquire(directory, what)
    except Exception as failure:  # pylint: disable=broad-except  # told to the others first, then raised
      error = failure
  if jax.process_count() > 1:
    held = bool(multihost_utils.broadcast_one_to_all(np.int32(fd is not None)))
    if not held and error is None:
      error = WorkdirInUseError(f"{directory} could not be locked by process 0 (its log says why: another {what} "
                                f"holds it, or the folder is not writable).")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if fd is not None:
      os.ftruncate(fd, 0)   # a clean exit leaves no holder behind
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
