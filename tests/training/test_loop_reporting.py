"""What the training loop reports: the first and last loss of even a short run, the learning rate and the gradient
norm as TensorBoard scalars, and one readable progress line per log interval on the console."""

import dataclasses

import numpy as np

from latent_diffusion import console
from latent_diffusion.training import loop, state as state_lib
from tests.robustness.toy_stage import toy_config, toy_stage


def _scalars(directory) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every TensorBoard event file under `directory`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # clu's writer needs it anyway

  scalars = {}
  for path in directory.rglob("events.out.tfevents*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
  return scalars


def test_a_run_shorter_than_the_log_interval_reports_first_and_last_loss_lr_and_grad_norm(tmp_path, capsys):
  """Issue 18 defect 8 (train_loss_first == train_loss_last with fewer steps than log_every_steps) and issue 15's
  TensorBoard scalars."""
  config = toy_config(train_steps=5, log_every_steps=100, checkpoint_every_steps=100)
  schedule = state_lib.learning_rate_schedule(config.toy.optim, 5)
  stage = dataclasses.replace(toy_stage(config, tmp_path), learning_rate=schedule)
  _, _, history = loop.train_stage(stage)
  assert [h["step"] for h in history] == [1, 5]
  summary = loop.loss_summary(history)
  assert summary["train_loss_first"] == history[0]["loss"] != summary["train_loss_last"] == history[1]["loss"]
  scalars = _scalars(tmp_path / "toy" / "tensorboard")
  assert scalars["train/learning_rate"].keys() == {1, 5}
  np.testing.assert_allclose([scalars["train/learning_rate"][s] for s in (1, 5)], [schedule(0), schedule(4)], rtol=1e-6)
  assert scalars["train/learning_rate"][1] == 0.0   # warmup from 0 (toy: 2 warmup steps)
  assert all(np.isfinite(v) and v > 0 for v in scalars["train/grad_norm"].values())
  err = capsys.readouterr().err.splitlines()
  assert err[0] == "toy: training steps 1..5 (compiling the step first)"
  assert err[1].startswith("toy  step 1/5 (20%)  loss ") and "steps/s  ETA" in err[2]


def test_durations_read_well():
  assert [console.duration(s) for s in (0.4, 59, 61, 3600 + 62)] == ["0 s", "59 s", "1:01", "1:01:02"]
