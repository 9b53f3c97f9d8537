"""Host threads that yield the CPU to XLA's: per-thread OS priority for input decoding and output writing.

When the model itself runs on the CPU, the host's decode / write threads share the cores with XLA's intra-op
thread pool. A parallel XLA op waits for its slowest thread, so a host thread that takes a core from one of them
for a few milliseconds stalls the whole op (measured: the pre-encoding job ran 2-3x its own host work slower than
the bare encoder; benchmarks/README.md). Raising the niceness of the host threads lets the kernel run
them only when XLA's threads do not want the core. On accelerators the host work overlaps the device instead and
nothing needs lowering (`resolve_nice`).

Linux applies setpriority(PRIO_PROCESS, thread id) to one thread; elsewhere this is a no-op.
"""

import concurrent.futures
import os
import threading

import jax

_lowered = threading.local()


def resolve_nice(nice: int | str, option: str) -> int:
  """Config value `option` -> niceness increment: 'auto' = 10 when JAX computes on the CPU, else 0; or an int >= 0."""
  if nice == "auto":
    return 10 if jax.default_backend() == "cpu" else 0
  if not isinstance(nice, int) or nice < 0:
    raise ValueError(f"{option}={nice!r}: expected 'auto' or an int >= 0 (an unprivileged process can only "
                     f"raise niceness).")
  return nice


def lower_current_thread(increment: int) -> None:
  """Raises the calling thread's niceness by `increment` (once per thread; later calls do nothing)."""
  if increment <= 0 or getattr(_lowered, "done", False) or not hasattr(os, "setpriority"):
    return
  _lowered.done = True
  tid = threading.get_native_id()
  try:
    os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
  except OSError:  # a sandbox that forbids it: the thread keeps its priority
    pass


def low_priority_executor(increment: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
  """One worker thread, at `increment` more niceness, for work submitted in order (e.g. writes)."""
  return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name, initializer=lower_current_thread,
                                               initargs=(increment,))
