"""Shared checks for the model tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _assert_fully_annotated(variables):
  """Every parameter has a logical PartitionSpec with one entry per dimension (none left replicated)."""
  params = variables["params"]
  values = jax.tree.leaves(nn.unbox(params))
  specs = jax.tree.leaves(nn.get_partition_spec(params), is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  assert values and len(specs) == len(values)
  for spec, value in zip(specs, values):
    assert isinstance(spec, jax.sharding.PartitionSpec)
    assert len(spec) == value.ndim, (spec, value.shape)
    assert any(name is not None for name in spec), spec


@pytest.fixture(scope="session")
def assert_fully_annotated():
  return _assert_fully_annotated


def _random_params(module, *args, seed=0, **kwargs):
  """Unboxed variables of `module` filled from numpy (fan-in scaled normals; norm scales near 1).

  Real initialisers would compile a random-number kernel per parameter shape, which dominates
  the runtime of these tiny tests; the shapes come from an abstract `init` instead.
  """
  rng = np.random.default_rng(seed)
  abstract = nn.unbox(jax.eval_shape(module.init, {"params": jax.random.key(0), "sample": jax.random.key(1)},
                                     *args, **kwargs))

  def fill(path, leaf):
    if leaf.ndim > 1:
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="session")
def random_params():
  return _random_params
