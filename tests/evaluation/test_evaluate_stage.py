"""The evaluate stage and evaluation during training on configs/tiny.py's run: the figures land in
metrics.json and TensorBoard; a failing evaluator names its missing file and costs nothing else."""

import json
import shutil

import ml_collections
import pytest
from tensorboard.backend.event_processing import event_accumulator

from latent_diffusion import experiment
from latent_diffusion.configs.base import evaluator
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

TABLE = ("fid", "fid_real_floor", "fid_collapsed", "fid_no_guidance", "precision", "recall", "recall_collapsed")


def test_evaluate_stage_writes_the_table(trained_workdir):
  figures = json.loads((trained_workdir / "metrics.json").read_text())["evaluate"]
  assert "errors" not in figures, figures.get("errors")
  for name in TABLE + ("precision_collapsed", "memorization_ratio", "psnr", "fid_reconstruction"):
    assert isinstance(figures[name], float), name
  assert figures["fid_real_floor"] < figures["fid"]  # a 60-step model is far from real digits
  assert figures["feature_network_val_accuracy"] > 0.5 and figures["classifier_val_accuracy_real"] > 0.95
  assert (trained_workdir / "samples.png").is_file()
  assert any(name.startswith("time_s/source_samples") for name in figures)


def test_training_evaluates_the_ema_weights_periodically(trained_workdir):
  ldm = json.loads((trained_workdir / "metrics.json").read_text())["ldm"]
  history = ldm["evals_during_training"]
  assert [entry["step"] for entry in history] == [60] and history[0]["fid"] > 0  # tiny: eval at the last step
  events = event_accumulator.EventAccumulator(str(trained_workdir / "ldm" / "tensorboard" / "ldm"),
                                              size_guidance={event_accumulator.TENSORS: 0}).Reload()
  assert "val/fid" in events.Tags()["tensors"]


def test_a_failing_evaluator_names_the_file_and_loses_nothing(trained_workdir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  checkpoints_before = sorted(p.name for p in (workdir / "ldm" / "checkpoints").iterdir())
  config = tiny_config("stages=('evaluate',)", f"evaluate.inception.weights={tmp_path}/pt_inception.pth")
  with config.unlocked():
    config.evaluate.evals = ml_collections.ConfigDict(dict(
        fid=evaluator("fid"), fid_inception=evaluator("fid", network="inception", output="pool3")))
  metrics = experiment.run(config, workdir)
  figures = json.loads((workdir / "metrics.json").read_text())["evaluate"]
  assert figures == metrics["evaluate"]
  assert "pt_inception.pth" in figures["errors"]["fid_inception"]
  assert "pt_inception-2015-12-05-6726825d.pth" in figures["errors"]["fid_inception"]  # and where to get it
  assert isinstance(figures["fid"], float) and "fid_inception" not in figures
  assert sorted(p.name for p in (workdir / "ldm" / "checkpoints").iterdir()) == checkpoints_before
  assert json.loads((workdir / "metrics.json").read_text())["ldm"]["train_steps"] == 60
