"""One run per workdir: a second job refuses at start naming the holder; a killed holder's lock is stale."""

import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from latent_diffusion import workdir_lock

_HOLDER = """
import sys, time
from latent_diffusion import workdir_lock
with workdir_lock.hold(sys.argv[1], "training job"):
  print("held", flush=True)
  time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
  """A process holding tmp_path/run (killed with SIGKILL at the end if still alive)."""
  job = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
  assert job.stdout.readline().strip() == "held"
  yield job
  if job.poll() is None:
    job.kill()
  job.wait()


def test_a_second_job_refuses_naming_the_holder(holder, tmp_path):
  with pytest.raises(workdir_lock.WorkdirInUseError,
                     match=rf"run is in use by another training job \(host {socket.gethostname()}, pid {holder.pid}, "):
    with workdir_lock.hold(tmp_path / "run", "training job"):
      pass
  train = subprocess.run([sys.executable, "-m", "latent_diffusion.cli.train", "--config=configs/tiny.py",
                          f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
  assert train.returncode != 0
  assert f"WorkdirInUseError: {tmp_path / 'run'} is in use by another training job" in train.stderr
  assert f"pid {holder.pid}" in train.stderr
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lock"]   # the refused job wrote nothing


def test_a_killed_holders_lock_is_recognised_as_stale_and_taken_over(holder, tmp_path, caplog):
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  caplog.set_level(logging.WARNING)
  with workdir_lock.hold(tmp_path / "run"):
    assert f'"pid": {os.getpid()}' in (tmp_path / "run" / "lock").read_text()
  assert f"taking over a stale lock of a job that did not exit cleanly (host {socket.gethostname()}, " \
         f"pid {holder.pid}," in caplog.text
  caplog.clear()
  with workdir_lock.hold(tmp_path / "run"):   # a clean exit leaves no holder behind
    pass
  assert "stale" not in caplog.text
