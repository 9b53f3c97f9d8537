"""Mesh construction and logical-axis sharding.

Parameters carry logical axis names (see latent_diffusion.models.layers); `config.mesh.rules`
maps them to mesh axes. One set of rules shards parameters, optimizer state and EMA alike.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(mesh_config, devices: list | None = None) -> Mesh:
  """A mesh of all (or the given) devices with `mesh_config.axes`; one `shape` entry may be -1 (fill)."""
  shape = list(mesh_config.shape)
  n = len(devices) if devices is not None else jax.device_count()
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape={tuple(shape)}: at most one axis may be -1.")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n % known:
      raise ValueError(f"config.mesh.shape={tuple(shape)} does not divide the {n} devices.")
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(f"config.mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices, {n} are present.")
  # Auto axes: XLA propagates shardings from the jit in/out shardings (no per-op sharding types).
  axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
  return jax.make_mesh(tuple(shape), tuple(mesh_config.axes), axis_types=axis_types, devices=devices)


def rules(mesh_config) -> tuple:
  return tuple((name, tuple(axis) if isinstance(axis, list) else axis) for name, axis in mesh_config.rules)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with every dimension the named mesh axes do not divide evenly left unsharded."""
  def size(axes):
    axes = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[a] for a in axes if a is not None]))
  return P(*[axes if axes is None or dim % size(axes) == 0 else None for axes, dim in zip(spec, shape)])


def state_shardings(init_fn: Callable[..., Any], mesh: Mesh, mesh_config, *args) -> Any:
  """Shardings of `nn.unbox(init_fn(*args))`, from the logical names of the boxed result.

  A dimension whose size the mesh axes do not divide (e.g. a 1-channel output conv) stays whole.
  """
  abstract = jax.eval_shape(init_fn, *args)
  logical = nn.get_partition_spec(abstract)
  shapes = jax.tree.map(lambda x: x.shape, nn.unbox(abstract))
  mesh_specs = nn.logical_to_mesh(logical, rules(mesh_config))
  is_spec = lambda x: isinstance(x, P)
  fitted = jax.tree.map(lambda spec, shape: _fit(spec, shape, mesh), mesh_specs, shapes, is_leaf=is_spec)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), fitted, is_leaf=is_spec)


def batch_sharding(mesh: Mesh, mesh_config) -> NamedSharding:
  """Leading (batch) dimension split over the mesh axes the 'batch' rule names."""
  axis = dict(rules(mesh_config)).get("batch")
  return NamedSharding(mesh, P(axis))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each process's slice of the batch into global arrays sharded by `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
