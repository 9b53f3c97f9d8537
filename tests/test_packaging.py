"""The package installs from a wheel into a fresh venv; its console scripts are the `python -m` jobs and
find the packaged configs from any directory."""

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest

from tests.training import test_experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
  """bin/ of a fresh venv with the package's wheel installed; the dependencies are this interpreter's (a .pth
  file adds its site-packages), so the install is offline. (--no-deps: pip's check would walk into torch's
  triton, which this machine uninstalls; the wheel's own pins are checked against them below.)"""
  root = tmp_path_factory.mktemp("packaging")
  source = root / "source"   # a copy: the build writes build/ and *.egg-info next to the sources
  shutil.copytree(REPO / "latent_diffusion", source / "latent_diffusion", ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md", "requirements.txt"):
    shutil.copy(REPO / name, source / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
  subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"),
                        str(source)], check=True)
  (wheel,) = (root / "dist").glob("*.whl")
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
  (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run(pip + ["--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-index", "--no-deps",
                        str(wheel)],
                 check=True)
  return venv / "bin"


def test_wheel_holds_the_package_configs_and_scripts(installed):
  assert set(SCRIPTS) == {"ldm-train", "ldm-evaluate", "ldm-sample", "ldm-encode", "ldm-export"}
  assert all((installed / script).is_file() for script in SCRIPTS)
  found = subprocess.run([installed / "python", "-c", "import latent_diffusion, latent_diffusion.configs.tiny; "
                          "print(latent_diffusion.__file__)"], cwd=installed, capture_output=True, text=True,
                         check=True)
  assert "/venv/lib/" in found.stdout   # the installed copy, not the working tree


def test_wheel_pins_are_the_installed_versions(installed):
  check = ("import importlib.metadata as m; from packaging.requirements import Requirement; "
           "reqs = [Requirement(r) for r in m.requires('latent-diffusion-jax')]; "
           "print([str(r) for r in reqs if not r.specifier.contains(m.version(r.name))] + [len(reqs)])")
  checked = subprocess.run([installed / "python", "-c", check], capture_output=True, text=True, check=True)
  (count,) = eval(checked.stdout)  # pylint: disable=eval-used  # [unmet pins..., number of pins]
  assert count == len([l for l in (REPO / "requirements.txt").read_text().splitlines() if "==" in l and not l.startswith("#")])


def _flag_lines(help_text: str) -> list[str]:
  return [line.strip() for line in help_text.splitlines() if line.strip().startswith("--")]


def test_console_script_help_equals_python_m(installed, tmp_path):
  script = subprocess.run([installed / "ldm-train", "--help"], cwd=tmp_path, capture_output=True, text=True)
  module = subprocess.run([sys.executable, "-m", SCRIPTS["ldm-train"].split(":")[0], "--help"], cwd=REPO,
                          capture_output=True, text=True)
  assert script.returncode == module.returncode and "--workdir" in script.stdout
  assert _flag_lines(script.stdout) == _flag_lines(module.stdout)
  evaluate = subprocess.run([installed / "ldm-evaluate", "--help"], cwd=tmp_path, capture_output=True, text=True)
  assert _flag_lines(evaluate.stdout) == _flag_lines(module.stdout)   # the evaluate stage of a train job


def test_tiny_config_trains_through_the_console_script(installed, tmp_path, cached_compiles_env):
  """From a directory outside the repository, `configs/tiny.py` is the packaged config. The job is
  tests/training/test_experiment.py's autoencoder run (its compiles are cached for the session)."""
  workdir = tmp_path / "run"
  run = subprocess.run([installed / "ldm-train", *test_experiment.train_command(workdir)[3:]], cwd=tmp_path,
                       capture_output=True, text=True, env=cached_compiles_env, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["autoencoder"]["train_steps"] == test_experiment.STEPS
