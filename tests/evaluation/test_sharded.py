"""The evaluation gives the same figures on 1 device, 8 emulated devices and 2 processes (gloo), and a failing
evaluator costs only its own figures."""

import json
import os
import subprocess
import sys

import pytest

from tests.parallel.test_multihost import _free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{'1,1,1' | '4,2,1' | '2 processes': {'figures', 'errors'}}; the three runs go on concurrently."""
  out = tmp_path_factory.mktemp("sharded")
  worker = [sys.executable, "-m", "tests.evaluation.sharded_worker"]
  coordinator = f"127.0.0.1:{_free_port()}"
  env = lambda devices: dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  jobs = [subprocess.Popen(worker + ["none", "1", "0", str(out / "one.json"), "1,1,1", "4,2,1"], env=env(8),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  jobs += [subprocess.Popen(worker + [coordinator, "2", str(i), str(out / "two.json")], env=env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for job in jobs:
    _, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr[-4000:]
  return {**json.loads((out / "one.json").read_text()), **json.loads((out / "two.json").read_text())}


def assert_same_figures(ours: dict, reference: dict):
  assert ours.keys() == reference.keys()
  for name, ref in reference.items():
    value = ours[name]
    if isinstance(ref, list):
      assert value == pytest.approx(ref, rel=1e-5), name
    else:
      assert value == pytest.approx(ref, rel=1e-5, abs=1e-9), (name, value, ref)


@pytest.mark.parametrize("layout", ["4,2,1", "2 processes"])
def test_figures_equal_one_device(runs, layout):
  reference = runs["1,1,1"]
  assert reference["errors"] == {}, reference["errors"]
  figures = reference["figures"]
  # Every evaluator contributed, and the figures are of a real (random-weight, so poor) model.
  for name in ("fid", "fid_collapsed", "precision", "recall", "kid", "inception_score", "memorization_ratio",
               "psnr", "generated_accuracy", "classifier_val_accuracy_real", "feature_network_val_accuracy"):
    assert name in figures, name
  assert figures["fid"] > 1.0 and figures["classifier_val_accuracy_real"] > 0.95
  assert runs[layout]["errors"] == {}
  assert_same_figures(runs[layout]["figures"], figures)
