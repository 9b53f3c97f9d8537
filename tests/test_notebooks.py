"""The committed notebooks run top to bottom in a fresh kernel on tiny settings, and show their images."""

import os
import pathlib
import shutil

import pytest

from notebooks import execute
from tests import sd_pipelines

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernel_env(cached_compiles_env) -> dict:
  """The kernel imports this working tree's package and shares the session's compilation cache."""
  path = os.pathsep.join(filter(None, [str(REPO), cached_compiles_env.get("PYTHONPATH")]))
  return dict(cached_compiles_env, PYTHONPATH=path)


def _images(book) -> int:
  return sum("image/png" in output.get("data", {}) for cell in book.cells for output in cell.get("outputs", []))


def _text(book) -> str:
  return "".join(output.get("text", "") for cell in book.cells for output in cell.get("outputs", []))


def test_committed_notebooks_hold_their_outputs():
  for name in ("quickstart", "text_to_image"):
    book = execute.nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert _images(book) >= 1 and all(c.execution_count for c in book.cells if c.cell_type == "code"), name


def test_quickstart_notebook_on_the_tiny_run(trained_workdir, tmp_path, kernel_env):
  """On the tiny config's finished run (the session's): the notebook resumes its trained stages and samples."""
  workdir = shutil.copytree(trained_workdir, tmp_path / "run")
  parameters = {"CONFIG": "configs/tiny.py", "OVERRIDES": ["--config.stages=('autoencoder', 'ldm')"],
                "WORKDIR": str(workdir)}
  book = execute.execute(REPO / "notebooks" / "quickstart.ipynb", parameters,
                         output=tmp_path / "quickstart.ipynb", cwd=tmp_path, env=kernel_env, timeout=600)
  assert _images(book) == 2 and (workdir / "guidance_1.5.png").is_file()
  assert '"train_steps": 60' in _text(book) and "ms per image" in _text(book)


def test_text_to_image_notebook_on_a_tiny_pipeline(tmp_path, kernel_env):
  pipeline = sd_pipelines.write_tiny_sd(tmp_path / "tiny_sd")
  book = execute.execute(REPO / "notebooks" / "text_to_image.ipynb",
                         {"PIPELINE": str(pipeline), "NUM_STEPS": 4, "SIZE": 16},
                         output=tmp_path / "text_to_image.ipynb", cwd=tmp_path, env=kernel_env, timeout=600)
  assert _images(book) == 1 and "re-imported parameters bitwise equal: True" in _text(book)
  assert (tmp_path / "exported_pipeline" / "model_index.json").is_file()
