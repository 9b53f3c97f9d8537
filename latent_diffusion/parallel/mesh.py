"""Mesh construction and logical-axis sharding.

Parameters carry logical axis names (see latent_diffusion.models.layers); `config.mesh.rules`
maps them to mesh axes. One set of rules shards parameters, optimizer state and EMA alike.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def _fill(shape: list[int], n: int, what: str) -> list[int]:
  """`shape` with its (at most one) -1 set so that the product is n."""
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.{what}={tuple(shape)}: at most one axis may be -1.")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n % known:
      raise ValueError(f"config.mesh.{what}={tuple(shape)} does not divide the {n} devices.")
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(f"config.mesh.{what}={tuple(shape)} needs {int(np.prod(shape))} devices, {n} are present.")
  return shape


def make_mesh(mesh_config, devices: list | None = None) -> Mesh:
  """A mesh of all (or the given) devices with `mesh_config.axes`.

  `shape` is the mesh inside a slice (ICI; one entry may be -1 = fill); `dcn_shape` (all 1 in
  configs/base.py) multiplies it across slices or, off TPU, across processes: the device order then keeps each
  ICI block on one slice / process, so collectives over ICI axes never cross the slow network.
  """
  devices = list(jax.devices()) if devices is None else list(devices)
  dcn = [int(d) for d in mesh_config.dcn_shape]
  if len(dcn) != len(mesh_config.shape) or min(dcn) < 1:
    raise ValueError(f"config.mesh.dcn_shape={tuple(dcn)} must have one entry >= 1 per axis {tuple(mesh_config.axes)}.")
  granules = int(np.prod(dcn))
  if len(devices) % granules:
    raise ValueError(f"config.mesh.dcn_shape={tuple(dcn)} does not divide the {len(devices)} devices.")
  shape = _fill(list(mesh_config.shape), len(devices) // granules, "shape")
  # Auto axes: XLA propagates shardings from the jit in/out shardings (no per-op sharding types).
  axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
  if granules == 1:
    try:
      return jax.make_mesh(tuple(shape), tuple(mesh_config.axes), axis_types=axis_types, devices=devices)
    except NotImplementedError:
      # Mesh axes that are not products of the slice's physical axes (fsdp 8 on a v6e 16x16): jax.make_mesh splits
      # physical axes on v5e only; split them here too, each mesh axis still a contiguous run of a physical ring.
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
      return Mesh(grid, tuple(mesh_config.axes), axis_types=axis_types)
  on_tpu = devices[0].platform == "tpu"
  try:
    grid = mesh_utils.create_hybrid_device_mesh(shape, dcn, devices, process_is_granule=not on_tpu)
  except (ValueError, AssertionError) as error:
    unit = "slices" if on_tpu else "processes"
    raise ValueError(f"config.mesh.dcn_shape={tuple(dcn)} needs {granules} {unit} of {len(devices) // granules} "
                     f"devices each: {error}") from None
  return Mesh(grid, tuple(mesh_config.axes), axis_types=axis_types)


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


def box_like(abstract_boxed: Any, values: Any) -> Any:
  """`values` (plain arrays) wearing the logical-axis boxes of `abstract_boxed` (same tree structure), e.g.
  loaded weights given the annotations of `jax.eval_shape(module.init, ...)` so that they shard by the rules."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda box, value: box.replace_boxed(jax.numpy.asarray(value)) if is_box(box) else value,
                      abstract_boxed, values, is_leaf=is_box)


def place(boxed: Any, mesh: Mesh, mesh_config) -> tuple[Any, Any]:
  """(arrays, shardings): the unboxed values of `boxed` put on `mesh` by their logical axes (e.g. frozen weights)."""
  shardings = state_shardings(lambda: boxed, mesh, mesh_config)
  return jax.device_put(nn.unbox(boxed), shardings), shardings


def batch_sharding(mesh: Mesh, mesh_config) -> NamedSharding:
  """Leading (batch) dimension split over the mesh axes the 'batch' rule names."""
  axis = dict(rules(mesh_config)).get("batch")
  return NamedSharding(mesh, P(axis))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each process's slice of the batch into global arrays sharded by `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
