"""Shared fixtures: one tiny end-to-end run (both stages + evaluation) reused by several tests."""

import json
import os
import pathlib

import pytest

from latent_diffusion import configuration, pipeline
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
  """A workdir after configs/tiny.py ran all stages (autoencoder, ldm, evaluate)."""
  workdir = tmp_path_factory.mktemp("tiny_run")
  pipeline.run(tiny_config(), workdir)
  assert json.loads((workdir / "metrics.json").read_text()).keys() >= set(pipeline.STAGES)
  return workdir


@pytest.fixture(scope="session")
def random_lpips(tmp_path_factory):
  """(the lpips package's LPIPS with a random VGG16 trunk and the real heads, that trunk as a torchvision state
  dict file, the heads file): one random VGG16 for every LPIPS test of the session."""
  from tests import lpips_fixtures  # pylint: disable=import-outside-toplevel  # imports torch

  reference, vgg_path = lpips_fixtures.write_random_vgg(tmp_path_factory.mktemp("random_vgg16"))
  return reference, vgg_path, lpips_fixtures.HEADS


@pytest.fixture(scope="session")
def cached_compiles_env(tmp_path_factory) -> dict:
  """os.environ plus a session-wide JAX persistent compilation cache, for subprocess jobs: a run, its
  killed twin and its resume compile the same programs once (the tiny autoencoder job: 52 -> 15 CPU
  seconds). The executables are the same, so are the results (bitwise)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
