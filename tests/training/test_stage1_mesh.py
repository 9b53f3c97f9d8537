"""The stage-1 step (VQ codebook statistics and restarts, PatchGAN with batch statistics, the adaptive weight, two
optimizers) on a (2,2,2) mesh of 8 emulated CPU devices equals one device (float32 reduction order aside)."""

import pytest

from tests.parallel.emulated import run_on_emulated_devices

pytestmark = pytest.mark.slow


def test_two_optimizer_step_on_a_2x2x2_mesh_equals_one_device():
  runs = run_on_emulated_devices("tests.training.stage1_mesh_trajectories", fast_compile=True)
  one, mesh = runs["(1, 1, 1)"], runs["(2, 2, 2)"]
  assert len(one["metrics"]) == 3 and one["metrics"][0]["disc_loss"] == 0.0
  assert one["metrics"][-1]["disc_loss"] > 0 and one["metrics"][-1]["d_weight"] > 0
  relative = lambda a, b: abs(a - b) / max(abs(b), 1e-3)
  for ours, ref in zip(mesh["metrics"], one["metrics"], strict=True):
    assert ours.keys() == ref.keys()
    for name, value in ref.items():
      # The adaptive weight is a ratio of gradient norms: the most sensitive figure to the summation order.
      assert relative(ours[name], value) <= 1e-4, (name, ours[name], value)
  assert mesh["sums"].keys() == one["sums"].keys() and len(one["sums"]) > 2
  for path, value in one["sums"].items():
    assert relative(mesh["sums"][path], value) <= 1e-4, (path, mesh["sums"][path], value)
