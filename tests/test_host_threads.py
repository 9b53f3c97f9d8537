"""Host threads that yield to XLA: niceness is raised for the worker thread only, once; bad settings are named."""

import os
import threading

import pytest

from latent_diffusion import host_threads


def _nice_of(thread_id: int) -> int:
  return os.getpriority(os.PRIO_PROCESS, thread_id)


def test_executor_thread_runs_at_lower_priority_and_the_caller_keeps_its_own():
  main_before = _nice_of(threading.get_native_id())
  with host_threads.low_priority_executor(5, "test") as pool:
    worker_nice = pool.submit(lambda: _nice_of(threading.get_native_id())).result()
    again = pool.submit(lambda: (host_threads.lower_current_thread(5), _nice_of(threading.get_native_id()))[1]).result()
  assert worker_nice == min(19, main_before + 5)
  assert again == worker_nice                                    # once per thread, not cumulative
  assert _nice_of(threading.get_native_id()) == main_before


def test_resolve_nice():
  assert host_threads.resolve_nice("auto", "x") == 10            # the tests run JAX on the CPU
  assert host_threads.resolve_nice(0, "x") == 0
  with pytest.raises(ValueError, match="config.encode.host_nice=-3: expected 'auto' or an int >= 0"):
    host_threads.resolve_nice(-3, "config.encode.host_nice")
