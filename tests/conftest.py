"""Shared fixtures: one tiny end-to-end run (both stages + evaluation) reused by several tests."""

import json
import os
import pathlib

import pytest

from latent_diffusion import configuration, pipeline


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
def cached_compiles_env(tmp_path_factory) -> dict:
  """os.environ plus a session-wide JAX persistent compilation cache, for subprocess jobs: a run, its
  killed twin and its resume compile the same programs once (the tiny autoencoder job: 52 -> 15 CPU
  seconds). The executables are the same, so are the results (bitwise)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
