"""A checkpoint written on one mesh resumes on another (a pod slice comes back smaller or larger): the state
is resharded by the logical rules and, with the same global batch, the loss trajectory equals an
uninterrupted run on the new mesh."""

import pytest

from tests.parallel.emulated import run_on_emulated_devices

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
  return run_on_emulated_devices("tests.robustness.mesh_resume")


@pytest.mark.parametrize("case, devices", [("8 devices data=8 -> 4 devices data=2 fsdp=2", 4),
                                           ("4 devices data=2 fsdp=2 -> 8 devices data=2 fsdp=4", 8)])
def test_resumed_on_another_mesh_the_losses_equal_an_uninterrupted_run_there(results, case, devices):
  result = results[case]
  # resharded onto the new mesh by the logical rules (the hidden kernel's 'mlp' axis over 'fsdp')
  assert result["devices"] == devices and result["restored_spec"] == "P(None, 'fsdp')"
  assert len(result["resumed"]) == len(result["uninterrupted"]) == 4
  differences = [abs(ours - ref) / abs(ref) for ours, ref in zip(result["resumed"], result["uninterrupted"])]
  print(f"{case}: max relative loss difference {max(differences):.1e}")
  assert max(differences) <= 1e-5, result
