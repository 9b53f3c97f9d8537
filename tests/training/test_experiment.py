"""End to end on configs/tiny.py: both stages train (loss falls), checkpoints resume, samples come out."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from latent_diffusion import experiment, generation, parallel
from latent_diffusion.preemption import PREEMPTED_EXIT_CODE
from latent_diffusion.training import ldm
from latent_diffusion.training.autoencoder import load_params as load_autoencoder
from latent_diffusion.training.checkpoint import StageCheckpoints
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_both_stages_learn(trained_workdir):
  metrics = json.loads((trained_workdir / "metrics.json").read_text())
  ae, stage2 = metrics["autoencoder"], metrics["ldm"]
  assert ae["train_steps"] == 60 and stage2["train_steps"] == 60
  assert ae["global_batch_size"] == 16 and stage2["global_batch_size"] == 8       # each stage's own batch size
  assert ae["train_loss_last"] < 0.7 * ae["train_loss_first"]
  assert stage2["train_loss_last"] < 0.8 * stage2["train_loss_first"]
  assert ae["val_psnr_db"] > 10.0
  assert 0.1 < stage2["scale_factor"] < 100.0
  for name in experiment.STAGES:
    assert metrics[name]["wall_time_s"] > 0
  assert (trained_workdir / "autoencoder" / "tensorboard").is_dir()


def test_evaluation_writes_grid_and_scores(trained_workdir):
  metrics = json.loads((trained_workdir / "metrics.json").read_text())["evaluate"]
  assert metrics["classifier_val_accuracy_real"] > 0.95  # the judge itself is good
  assert metrics["generated_samples"] == 20 and len(metrics["generated_accuracy_per_class"]) == 10
  assert metrics["generated_accuracy"] == pytest.approx(np.mean(metrics["generated_accuracy_per_class"]))
  grid = Image.open(trained_workdir / "samples.png")
  assert grid.size == (2 * 17 * 4, 10 * 17 * 4)  # 2 columns x 10 class rows, 1-pixel gaps, 4x upscaled


def test_deterministic_ddim_sampling_from_the_checkpoint(trained_workdir):
  config = tiny_config("sample.eta=0.0")
  generator = generation.Generator(ldm.load_trained(trained_workdir, parallel.make_mesh(config.mesh), config))
  request = {"label": np.arange(10, dtype=np.int32)}
  first, _ = generator(request, num_steps=5, guidance_scale=3.0, seed=7)
  again, _ = generator(request, num_steps=5, guidance_scale=3.0, seed=7)
  other, _ = generator(request, num_steps=5, guidance_scale=3.0, seed=8)
  assert first.shape == (10, 16, 16, 1)
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).mean() > 1e-3


def test_sample_cli_restores_the_checkpoint(trained_workdir, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "latent_diffusion.cli.sample", f"--workdir={trained_workdir}", f"--output={tmp_path}",
       "--num_images=3", "--label=7", "--num_steps=4", "--guidance_scale=2.0", "--seed=1"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  files = sorted(p.name for p in tmp_path.glob("*.png"))
  assert files == ["0000_class7.png", "0001_class7.png", "0002_class7.png", "grid.png"]
  assert Image.open(tmp_path / "0000_class7.png").size == (16, 16)
  bad = subprocess.run([sys.executable, "-m", "latent_diffusion.cli.sample", f"--workdir={trained_workdir}", "--label=10"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--label=10 is not a class of this model" in bad.stderr


def _checkpoint_steps(directory: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


STEPS = 60


def train_command(workdir):
  return [sys.executable, "-m", "latent_diffusion.cli.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          "--config.stages=('autoencoder',)", "--config.autoencoder.loop.checkpoint_every_steps=10",
          f"--config.autoencoder.loop.train_steps={STEPS}", "--config.autoencoder.loop.eval_every_steps=1000"]


@pytest.fixture(scope="module")
def uninterrupted_autoencoder(tmp_path_factory, cached_compiles_env):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run = subprocess.run(train_command(workdir), capture_output=True, timeout=300, env=cached_compiles_env)
  assert run.returncode == 0
  return workdir


def _interrupt(workdir, signum, env, until) -> tuple[int, str]:
  """Starts the job, sends `signum` once until(checkpoint steps) holds; returns (exit code, its log)."""
  checkpoints = workdir / "autoencoder" / "checkpoints"
  log = workdir.parent / f"{workdir.name}.{signum}.log"
  with open(log, "w") as stderr:
    job = subprocess.Popen(train_command(workdir), stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
      deadline = time.time() + 240
      while not until(_checkpoint_steps(checkpoints)) and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    finally:
      os.kill(job.pid, signum)
      job.wait(timeout=300)
  return job.returncode, log.read_text()


def test_preempted_then_killed_training_resumes_exactly(tmp_path, uninterrupted_autoencoder, cached_compiles_env):
  """The user's bad day on the tiny config. SIGTERM mid-run: a checkpoint at the step the job stopped at
  (not the last periodic one: 0 steps lost) and exit code 75. The rerun resumes from exactly there and is
  SIGKILLed: the next rerun resumes from its last periodic checkpoint and ends bitwise equal to an
  uninterrupted run."""
  workdir, env = tmp_path / "run", cached_compiles_env
  checkpoints = workdir / "autoencoder" / "checkpoints"
  code, log = _interrupt(workdir, signal.SIGTERM, env, until=lambda steps: len(steps) >= 2)
  assert code == PREEMPTED_EXIT_CODE, log[-3000:]
  match = re.search(r"autoencoder: preempted \(SIGTERM\); stopped cleanly at step (\d+)\.", log)
  assert match, log[-3000:]
  stopped = int(match.group(1))
  assert 20 <= stopped < STEPS and _checkpoint_steps(checkpoints)[-1] == stopped

  code, log = _interrupt(workdir, signal.SIGKILL, env, until=lambda steps: steps and steps[-1] > stopped)
  assert code == -signal.SIGKILL and f"autoencoder: resumed from checkpoint at step {stopped}." in log
  killed_at = StageCheckpoints(checkpoints, read_only=True).latest_step()
  assert stopped < killed_at < STEPS, "the run was not killed mid-way"

  resumed = subprocess.run(train_command(workdir), capture_output=True, text=True, timeout=300, env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"autoencoder: resumed from checkpoint at step {killed_at}." in resumed.stderr
  a = json.loads((workdir / "metrics.json").read_text())["autoencoder"]
  b = json.loads((uninterrupted_autoencoder / "metrics.json").read_text())["autoencoder"]
  assert a["train_steps"] == b["train_steps"] == STEPS
  assert a["train_loss_last"] == b["train_loss_last"]  # the same batches and keys after the resumes
  assert a["val_psnr_db"] == b["val_psnr_db"]
  config = tiny_config()
  mesh = parallel.make_mesh(config.mesh)
  _, params_a = load_autoencoder(config, workdir, mesh)
  _, params_b = load_autoencoder(config, uninterrupted_autoencoder, mesh)
  for leaf_a, leaf_b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(leaf_a, leaf_b)  # bitwise on CPU
