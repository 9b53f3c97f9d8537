"""The stage-1 step (VQ codebook statistics, LPIPS, PatchGAN with batch statistics, two optimizers) on a (2,2,2) mesh
of 8 emulated CPU devices equals one device."""

import json
import os
import subprocess
import sys

import pytest

from tests.lpips_fixtures import HEADS, write_random_vgg

pytestmark = pytest.mark.slow


def test_two_optimizer_step_on_a_2x2x2_mesh_equals_one_device(tmp_path):
  _, vgg_path = write_random_vgg(tmp_path)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-m", "tests.training.stage1_mesh_trajectories", str(vgg_path), str(HEADS)],
                          env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  one, mesh = runs["(1, 1, 1)"], runs["(2, 2, 2)"]
  assert len(one["metrics"]) == 3 and one["metrics"][-1]["disc_loss"] > 0 and one["metrics"][-1]["d_weight"] > 0
  for ours, ref in zip(mesh["metrics"], one["metrics"], strict=True):
    assert ours.keys() == ref.keys()
    for name, value in ref.items():
      assert abs(ours[name] - value) <= 1e-5 * max(abs(value), 1e-3), (name, ours[name], value)
  for ours, ref in zip(mesh["params"], one["params"], strict=True):
    assert abs(ours - ref) <= 1e-5 * max(abs(ref), 1e-3)
