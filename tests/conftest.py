"""Shared fixtures: one tiny end-to-end run (both stages + evaluation) reused by several tests."""

import json
import os
import pathlib

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from latent_diffusion import configuration, experiment
from latent_diffusion.configs import base


def data_config(**fields):
  """configs/base.py's data options with `fields` changed (every option the pipelines read is declared there)."""
  config = base.get_config().data
  config.update(fields)
  return config


def tiny_config(*overrides: str):
  """configs/tiny.py with `--config.` overrides such as 'ldm.loop.train_steps=10'."""
  config, _ = configuration.parse_config_args(["--config=configs/tiny.py"] + [f"--config.{o}" for o in overrides])
  return config


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir after configs/tiny.py ran all stages (autoencoder, ldm, evaluate), the LDM on batches of 8 (its own
  loop.batch_size) while the autoencoder takes data.batch_size (16)."""
  workdir = tmp_path_factory.mktemp("tiny_run")
  config = tiny_config()
  config.ldm.loop.batch_size = 8
  experiment.run(config, workdir)
  assert json.loads((workdir / "metrics.json").read_text()).keys() >= set(experiment.STAGES)
  return workdir


@pytest.fixture(scope="session")
def random_lpips(tmp_path_factory):
  """(the lpips package's LPIPS with a random VGG16 trunk and the real heads, that trunk as a torchvision state
  dict file, the heads file): one random VGG16 for every LPIPS test of the session."""
  from tests import lpips_fixtures  # pylint: disable=import-outside-toplevel  # imports torch

  reference, vgg_path = lpips_fixtures.write_random_vgg(tmp_path_factory.mktemp("random_vgg16"))
  return reference, vgg_path, lpips_fixtures.HEADS


_CACHE_OPTIONS = {"jax_compilation_cache_dir": "JAX_COMPILATION_CACHE_DIR",
                  "jax_persistent_cache_min_compile_time_secs": "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                  "jax_persistent_cache_min_entry_size_bytes": "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"}


def _shared_cache_dir(tmp_path_factory) -> pathlib.Path:
  """This session's cache directory, one for all pytest-xdist workers (each worker's base temp is a subdirectory
  of the session's): a program one worker compiled, the others load (JAX's cache is safe across processes)."""
  if "PYTEST_XDIST_WORKER" not in os.environ:
    return tmp_path_factory.mktemp("jax_cache")
  directory = tmp_path_factory.getbasetemp().parent / "jax_cache"
  directory.mkdir(exist_ok=True)
  return directory


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
  """One JAX persistent compilation cache for the whole session, in this process and (through os.environ) in
  every subprocess job: the many tiny runs (a run, its killed twin and its resume; the same tiny stages in
  several tests and processes) compile each program once and load it afterwards. The executables are the
  same, so are the results (bitwise); each session starts empty."""
  values = {"jax_compilation_cache_dir": str(_shared_cache_dir(tmp_path_factory)),
            "jax_persistent_cache_min_compile_time_secs": 0.0, "jax_persistent_cache_min_entry_size_bytes": 0}
  previous_env = {env: os.environ.get(env) for env in _CACHE_OPTIONS.values()}
  previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  for name, value in values.items():
    jax.config.update(name, value)
    os.environ[_CACHE_OPTIONS[name]] = str(value)
  compilation_cache.reset_cache()
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  for env, value in previous_env.items():
    if value is None:
      os.environ.pop(env, None)
    else:
      os.environ[env] = value
  compilation_cache.reset_cache()


@pytest.fixture(scope="session")
def cached_compiles_env(session_compilation_cache) -> dict:
  """os.environ for subprocess jobs, with the session's compilation cache (see session_compilation_cache)."""
  return dict(os.environ)
