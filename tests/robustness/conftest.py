"""The robustness tests' in-process runs share the session's persistent compilation cache."""

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module", autouse=True)
def cached_compiles(cached_compiles_env):
  """Every loop.train_stage jits its step anew (a new function), so each toy run would compile the same
  programs again (~4 of its ~5 s); with the cache on, the repeats load them. Off again after the module."""
  previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  values = (cached_compiles_env["JAX_COMPILATION_CACHE_DIR"], 0.0, 0)
  for name, value in zip(_CACHE_OPTIONS, values):
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
