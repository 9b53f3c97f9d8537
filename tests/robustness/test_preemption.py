"""SIGTERM in a 2-process run (jax.distributed over gloo): both processes stop at one agreed step,
save it and exit 75; the rerun resumes there and ends bitwise equal to an uninterrupted run (0 steps
lost). A checkpoint of 2 processes resumed by 1 process continues the same global batches."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from latent_diffusion.preemption import PREEMPTED_EXIT_CODE
from latent_diffusion.training import loop
from tests.robustness import toy_stage

pytestmark = pytest.mark.slow
STEPS = 40


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(env, num_processes, *workdirs, example_delay=0.0):
  env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  coordinator = f"127.0.0.1:{_free_port()}"
  return [subprocess.Popen([sys.executable, "-m", "tests.robustness.toy_worker", coordinator, str(num_processes),
                            str(i), str(STEPS), str(example_delay), *map(str, workdirs)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
          for i in range(num_processes)]


def _finish(jobs, expected_code=0) -> None:
  for job in jobs:
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == expected_code, stderr[-4000:]


def _record(workdir, process=0) -> dict:
  return json.loads(open(f"{workdir}.{process}.json").read())


def _steps(checkpoints) -> list[int]:
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


@pytest.fixture(scope="module")
def preempted(tmp_path_factory, cached_compiles_env):
  """A 2-process run SIGTERMed (one process only, as on a real pod) after its checkpoint at step 20;
  then one 2-process job resumes it and trains an uninterrupted reference run (root/'reference').
  Returns (root, each process's preemption step, the checkpoint steps right after the preemption)."""
  root = tmp_path_factory.mktemp("two_processes")
  checkpoints = root / "run" / "toy" / "checkpoints"
  jobs = _start(cached_compiles_env, 2, root / "run", example_delay=0.05)
  deadline = time.time() + 240
  while 20 not in _steps(checkpoints) and time.time() < deadline and all(j.poll() is None for j in jobs):
    time.sleep(0.05)
  assert 20 in _steps(checkpoints), "the run did not get to its first checkpoint"
  os.kill(jobs[1].pid, signal.SIGTERM)
  _finish(jobs, expected_code=PREEMPTED_EXIT_CODE)
  stopped, saved = [_record(root / "run", p)["preempted_at"] for p in (0, 1)], _steps(checkpoints)
  _finish(_start(cached_compiles_env, 2, root / "run", root / "reference"))
  return root, stopped, saved


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_loses_nothing(preempted):
  root, stopped, saved = preempted
  assert stopped[0] == stopped[1] and 20 < stopped[0] < STEPS, stopped
  assert saved[-1] == stopped[0]   # saved exactly where both stopped: 0 steps lost
  print(f"SIGTERM to process 1: both processes stopped at step {stopped[0]}, checkpoints {saved}, 0 steps lost")
  history = _record(root / "run")["history"]
  assert [h["step"] for h in history] == list(range(stopped[0] + 1, STEPS + 1))   # resumed where it stopped
  reference = _record(root / "reference")["history"]
  assert [h["loss"] for h in history] == [h["loss"] for h in reference[stopped[0]:]]
  resumed, whole = np.load(f"{root / 'run'}.npz"), np.load(f"{root / 'reference'}.npz")
  assert sorted(resumed.files) == sorted(whole.files)
  for name in whole.files:
    np.testing.assert_array_equal(resumed[name], whole[name])   # bitwise


def test_one_process_resumes_a_two_process_checkpoint_with_the_same_batches(preempted, tmp_path, caplog):
  """2 processes x 1 device -> this process (1 device). The grain iterator state of 2 processes cannot
  be restored by 1; the data order restarts at global batch 20, which holds the same examples in the
  same rows, so the losses continue those of the 2-process run (up to the reduction order of 1 vs 2
  devices)."""
  root, _, _ = preempted
  caplog.set_level(logging.INFO)
  shutil.copytree(root / "reference", tmp_path / "run")
  checkpoints = tmp_path / "run" / "toy" / "checkpoints"
  shutil.rmtree(checkpoints / str(STEPS))
  assert _steps(checkpoints) == [20]
  config = toy_stage.toy_config(train_steps=STEPS, checkpoint_every_steps=20)
  _, _, history = loop.train_stage(toy_stage.toy_stage(config, tmp_path / "run"))
  assert "written by 2 processes, this run has 1: the data order restarts at global batch 20" in caplog.text
  reference = _record(root / "reference")["history"][20:]
  assert [h["step"] for h in history] == [h["step"] for h in reference] == list(range(21, STEPS + 1))
  np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in reference], rtol=1e-5)
