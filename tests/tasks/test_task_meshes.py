"""The task conditioners' train step (inpainting, super-resolution, semantic maps, layouts, all in one model) on a
(2, 2, 2) mesh of emulated CPU devices equals one device."""

import pytest

from tests.parallel.emulated import run_on_emulated_devices

pytestmark = pytest.mark.slow


def test_task_train_step_on_a_2x2x2_mesh_matches_one_device():
  runs = run_on_emulated_devices("tests.tasks.task_mesh_trajectories", fast_compile=True)
  one, mesh = runs["(1, 1, 1)"], runs["(2, 2, 2)"]
  # x_t + [inpainting: mask 1 + masked latent 4] + [low-res image 3] + [segmentation 5 classes] + [layout box map
  # 12 classes]; layout context 16.
  assert one["concat_channels"] == 1 + 4 + 3 + 5 + 12 and one["context_width"] == 16
  assert len(mesh["losses"]) == 3 and one["losses"][0] > 0
  for ours, ref in zip(mesh["losses"], one["losses"]):
    assert abs(ours - ref) / abs(ref) <= 1e-5, (mesh["losses"], one["losses"])
