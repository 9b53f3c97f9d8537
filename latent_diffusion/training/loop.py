"""The training loop shared by both stages: one jitted, donated step; resume; metrics; checkpoints.

Per step the host only fetches the next batch and dispatches the compiled step; it blocks on the
device only at `log_every_steps` (metric read-out), evaluation and checkpoint intervals.
"""

import dataclasses
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers, periodic_actions

from latent_diffusion import parallel
from latent_diffusion.training.checkpoint import StageCheckpoints

# (state, batch, rng, *step_args) -> (state, {name: scalar}); rng is the stage's root key (fold in state.step);
# step_args are arrays the step reads but does not train (e.g. a frozen text encoder).
StepFn = Callable[..., tuple[Any, dict]]


@dataclasses.dataclass
class Stage:
  """What the loop needs to train one stage."""
  name: str
  loop_config: Any
  workdir: pathlib.Path
  state: Any
  state_shardings: Any
  step_fn: StepFn
  dataset: grain.MapDataset           # finite, per-example; shuffled and repeated here
  batch_size: int                     # global
  rng: jax.Array
  seed: int                           # data shuffling
  meta: dict                          # JSON-able constants saved with every checkpoint
  eval_fn: Callable[[Any], dict] | None = None   # state -> {name: float, or images [N, H, W, C] in [0, 1]}
  mesh: Any = None
  mesh_config: Any = None
  step_args: tuple = ()               # extra, read-only arguments of every step, already on the mesh
  step_args_shardings: tuple = ()


def batch_iterator(dataset: grain.MapDataset, global_batch_size: int, seed: int) -> grain.DatasetIterator:
  """This process's part of every global batch: its slice of the data, reshuffled every epoch.

  Prefetches in threads; checkpointable via get_state / set_state.
  """
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ValueError(f"Batch size {global_batch_size} does not split over {count} processes.")
  local = dataset[index::count].shuffle(seed=seed).repeat()
  # Batch after to_iter_dataset: filtered datasets (skipped images) cannot batch as a MapDataset.
  local = local.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  return iter(local.batch(global_batch_size // count, drop_remainder=True))


def compile_step(step_fn: StepFn, rng: jax.Array, state_shardings, mesh, mesh_config, step_args_shardings=()):
  """jit(state, batch, *step_args) -> (state, metrics): state sharded by its rules and donated, batch split
  over 'batch', step_args as given. The root key enters as a compile-time constant, identical on every process."""
  key_data = np.asarray(jax.random.key_data(rng))
  step = lambda state, batch, *args: step_fn(state, batch, jax.random.wrap_key_data(key_data), *args)
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh, mesh_config), *step_args_shardings),
                 out_shardings=(state_shardings, parallel.replicated(mesh)))


def _is_finite(metrics: dict) -> bool:
  return all(np.isfinite(v) for v in metrics.values())


def train_stage(stage: Stage) -> tuple[Any, dict, list[dict]]:
  """Trains `stage` to `loop_config.train_steps`, resuming from its latest checkpoint.

  Returns (final state, the stage's meta as saved with the last checkpoint, the training metrics
  logged by this call as [{'step': int, name: mean since the previous log}]).
  """
  cfg = stage.loop_config
  checkpoints = StageCheckpoints(stage.workdir / "checkpoints", keep=cfg.keep_checkpoints)
  batches = batch_iterator(stage.dataset, stage.batch_size, stage.seed)
  state, meta = stage.state, dict(stage.meta)
  if checkpoints.latest_step() is not None:
    state, meta = checkpoints.restore(state)
    batches.set_state(meta["data_iterator"])
    logging.info("%s: resumed from checkpoint at step %d.", stage.name, int(state.step))
  start = int(state.step)
  if start >= cfg.train_steps:
    logging.info("%s: already trained (%d steps).", stage.name, start)
    checkpoints.close()
    return state, meta, []

  batch_sharding = parallel.batch_sharding(stage.mesh, stage.mesh_config)
  step_fn = compile_step(stage.step_fn, stage.rng, stage.state_shardings, stage.mesh, stage.mesh_config,
                         stage.step_args_shardings)
  writer = metric_writers.create_default_writer(
      str(stage.workdir / "tensorboard"), just_logging=jax.process_index() > 0, collection=stage.name)
  progress = periodic_actions.ReportProgress(num_train_steps=cfg.train_steps, writer=writer,
                                             every_steps=cfg.log_every_steps)
  sums, count, history = None, 0, []
  for step in range(start + 1, cfg.train_steps + 1):
    batch = parallel.global_batch(next(batches), batch_sharding)
    with jax.transfer_guard("disallow"):
      state, metrics = step_fn(state, batch, *stage.step_args)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    count += 1
    progress(step)
    if step % cfg.log_every_steps == 0 or step == cfg.train_steps:
      means = {k: float(v) / count for k, v in jax.device_get(sums).items()}
      if not _is_finite(means):
        raise FloatingPointError(f"{stage.name}: non-finite training metrics at step {step}: {means}")
      writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
      history.append({"step": step, **means})
      sums, count = None, 0
    if stage.eval_fn is not None and (step % cfg.eval_every_steps == 0 or step == cfg.train_steps):
      write_evaluation(writer, step, stage.eval_fn(state))
    if step % cfg.checkpoint_every_steps == 0 or step == cfg.train_steps:
      meta = {**meta, "data_iterator": batches.get_state()}
      checkpoints.save(step, state, meta)
  writer.flush()
  checkpoints.wait()
  checkpoints.close()
  return state, meta, history


def write_evaluation(writer, step: int, results: dict) -> None:
  """Scalars as val/<name>; 4-D arrays (image batches [N, H, W, C] in [0, 1]) as TensorBoard images."""
  images = {f"val/{k}": v for k, v in results.items() if np.ndim(v) == 4}
  writer.write_scalars(step, {f"val/{k}": v for k, v in results.items() if np.ndim(v) != 4})
  if images:
    writer.write_images(step, images)


def loss_summary(history: list[dict]) -> dict:
  """First and last logged training loss of a run (for metrics.json)."""
  if not history:
    return {}
  return {"train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"]}


def restore_trained(workdir: pathlib.Path, state_template: Any) -> tuple[Any, dict]:
  """The latest checkpoint of a finished (or interrupted) stage, for use by later stages."""
  checkpoints = StageCheckpoints(workdir / "checkpoints")
  try:
    return checkpoints.restore(state_template)
  finally:
    checkpoints.close()



def restore_ema_params(workdir: pathlib.Path, template: Any) -> Any:
  """The EMA parameters of a stage's latest checkpoint (for inference), into `template`'s shapes and
  shardings; the optimizer state and the training parameters are never read."""
  checkpoints = StageCheckpoints(workdir / "checkpoints")
  try:
    return checkpoints.restore_subtree("ema_params", template)
  finally:
    checkpoints.close()


def latest_meta(workdir: pathlib.Path) -> dict | None:
  """The metadata of a stage's latest checkpoint, or None if it has none yet."""
  checkpoints = StageCheckpoints(workdir / "checkpoints")
  try:
    return None if checkpoints.latest_step() is None else checkpoints.restore_meta()
  finally:
    checkpoints.close()
