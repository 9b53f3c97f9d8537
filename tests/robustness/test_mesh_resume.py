"""A checkpoint written on one mesh resumes on another (a pod slice comes back smaller): the state
is resharded by the logical rules and, with the same global batch, the loss trajectory equals an
uninterrupted run on the new mesh."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-m", "tests.robustness.mesh_resume"], env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case, spec", [("fsdp 4 -> 2", "P(None, 'fsdp')"),
                                        ("data 8 -> 4", "P(None, 'fsdp')")])
def test_resumed_on_a_smaller_mesh_the_losses_equal_an_uninterrupted_run_there(results, case, spec):
  result = results[case]
  assert result["devices"] == 4 and result["restored_spec"] == spec   # resharded onto the 4-device mesh
  assert len(result["resumed"]) == len(result["uninterrupted"]) == 4
  for ours, ref in zip(result["resumed"], result["uninterrupted"]):
    assert abs(ours - ref) / abs(ref) <= 1e-5, result
