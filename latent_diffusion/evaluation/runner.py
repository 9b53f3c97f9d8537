"""Runs the evaluators named in config.evaluate.evals: each source streamed once, each network once per batch.

A failing part (a missing weights file, a source that cannot be read, a metric that cannot be computed) fails
only the evaluators that depend on it: their error message goes to `errors`, every other figure is kept.
"""

import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from latent_diffusion import parallel
from latent_diffusion.evaluation import generation, networks, sources
from latent_diffusion.evaluation.evaluators import EVALUATORS, STATISTICS, Request, figure_suffix


@dataclasses.dataclass
class EvalContext:
  """What sources and networks need: the config, the mesh, and how to get the models being evaluated."""
  config: object
  workdir: pathlib.Path
  mesh: object
  generator_fn: Callable[[float | None], generation.Sampler]     # guidance scale (None: config's) -> Sampler
  autoencoder_fn: Callable[[], tuple]                            # () -> (autoencoder module, params)
  samples_per_class: int
  network_cache: dict = dataclasses.field(default_factory=dict)  # name -> built Network, reusable across runs
  model_fn: Callable[[], object] | None = None                   # () -> the LatentDiffusion bundle evaluated

  def __post_init__(self):
    self.sharding = parallel.batch_sharding(self.mesh, self.config.mesh)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_size = self.config.sample.batch_size
    self.is_writer = jax.process_index() == 0
    self._gather = jax.jit(lambda x: x, out_shardings=self.replicated)
    shards = int(np.prod([self.mesh.shape[a] for a in np.atleast_1d(self.sharding.spec[0] or ())]))
    if self.batch_size % shards:
      raise ValueError(f"config.sample.batch_size={self.batch_size} does not split over the {shards} devices of "
                       f"the batch axes.")

  def generator(self, guidance_scale: float | None) -> generation.Sampler:
    return self.generator_fn(guidance_scale)

  def model(self):
    return self.model_fn()

  def autoencoder(self):
    return self.autoencoder_fn()

  def to_host(self, images: jax.Array) -> np.ndarray:
    """A global array, whole, on this host."""
    return np.asarray(self._gather(images).addressable_data(0))


def _error(e: Exception) -> str:
  return f"{type(e).__name__}: {e}"


def run(ctx: EvalContext, names) -> tuple[dict, dict]:
  """(figures, errors by evaluator name) of the evaluators `names` of config.evaluate.evals."""
  evals = ctx.config.evaluate.evals
  figures, errors, requests = {}, {}, {}
  for name in names:
    try:
      if name not in evals:
        raise ValueError(f"no such entry in config.evaluate.evals (has {sorted(evals)})")
      if evals[name].type not in EVALUATORS:
        raise ValueError(f"config.evaluate.evals.{name}.type={evals[name].type!r}; known: {sorted(EVALUATORS)}")
      requests[name] = EVALUATORS[evals[name].type].requests(evals[name], ctx)
    except Exception as e:  # pylint: disable=broad-except
      errors[name] = _error(e)
  # In request order, never set order: every process must run the same networks in the same order (their
  # collectives pair up across processes) and Python's string hashing differs between processes.
  wanted = list(dict.fromkeys(r for roles in requests.values() for r in roles.values() if isinstance(r, Request)))
  results, failed = {}, {}
  for source_name in sorted({r.source for r in wanted}):
    _stream(ctx, source_name, [r for r in wanted if r.source == source_name], ctx.network_cache, results, failed,
            figures)
  for network_name in sorted({r.network for r in wanted} & ctx.network_cache.keys()):
    figures.update(ctx.network_cache[network_name].info)
  for name, roles in requests.items():
    broken = [failed[r] for r in roles.values() if isinstance(r, Request) and r in failed]
    if broken:
      errors[name] = broken[0]
      continue
    try:
      role_results = {role: results[r] if isinstance(r, Request) else r for role, r in roles.items()}
      figures.update(EVALUATORS[evals[name].type].compute(evals[name], role_results, ctx,
                                                          figure_suffix(name, evals[name].type)))
    except Exception as e:  # pylint: disable=broad-except
      errors[name] = _error(e)
  for name, message in errors.items():
    logging.error("Evaluator %s failed (its figures are missing; the others are kept): %s", name, message)
  return figures, errors


def _stream(ctx, source_name: str, requests: list[Request], built: dict, results: dict, failed: dict,
            figures: dict) -> None:
  """Streams one source through the networks its requests name, filling `results` (or `failed`) per request.

  Its wall time (models loaded, samples generated, features computed; network builds excluded) goes to
  figures['time_s/source_<name>'], each network's build time to figures['time_s/network_<name>'].
  """
  start = time.perf_counter()
  try:
    source = sources.make_source(source_name, ctx)
  except Exception as e:  # pylint: disable=broad-except
    failed.update({r: f"source {source_name!r}: {_error(e)}" for r in requests})
    return
  live: dict[str, list[Request]] = {}
  for r in requests:
    try:
      if r.network not in built:
        if r.network not in networks.NETWORKS:
          raise ValueError(f"unknown network {r.network!r}; known: {sorted(networks.NETWORKS)}")
        network_start = time.perf_counter()
        built[r.network] = networks.NETWORKS[r.network](ctx)
        build_time = time.perf_counter() - network_start
        figures[f"time_s/network_{r.network}"] = round(build_time, 2)
        start += build_time
      live.setdefault(r.network, []).append(r)
    except Exception as e:  # pylint: disable=broad-except
      failed[r] = f"network {r.network!r}: {_error(e)}"
  stats = {r: STATISTICS[r.kind](source.size, ctx, r.option) for rs in live.values() for r in rs}
  try:
    for batch in source.batches():
      n = batch.valid
      for network_name in list(live):
        try:
          outputs = built[network_name].outputs(batch)
          for r in live[network_name]:
            labels = None if batch.labels is None else batch.labels[:n]
            stats[r].update(outputs[r.output][:n], batch.indices[:n], labels)
        except Exception as e:  # pylint: disable=broad-except
          failed.update({r: f"network {network_name!r} on source {source_name!r}: {_error(e)}"
                         for r in live.pop(network_name)})
  except Exception as e:  # pylint: disable=broad-except
    failed.update({r: f"source {source_name!r}: {_error(e)}" for rs in live.values() for r in rs})
    return
  for rs in live.values():
    for r in rs:
      try:
        results[r] = stats[r].result()
      except Exception as e:  # pylint: disable=broad-except
        failed[r] = _error(e)
  figures[f"time_s/source_{source_name}"] = round(time.perf_counter() - start, 2)
  logging.info("Evaluation source %s: %d samples in %.1f s.", source_name, source.size, time.perf_counter() - start)
