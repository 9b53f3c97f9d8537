"""The training loop shared by both stages: one jitted, donated step; resume; metrics; checkpoints.

Per step the host only fetches the next batch and dispatches the compiled step and the metric
tally; it blocks on the device only at `log_every_steps` (metric read-out), evaluation and
checkpoint intervals. What the loop survives, and how:
- SIGTERM: all processes stop at one agreed step, save it and exit with PREEMPTED_EXIT_CODE
  (latent_diffusion.preemption); the rerun resumes from that step.
- Non-finite steps: the guarded step skips the update (training.state); the loop counts them and
  stops with NonFiniteError after `max_consecutive_nonfinite_steps` in a row, before saving.
- Damaged checkpoints: the newest step that reads back is restored (training.checkpoint).
- A changed config: refused if it changes the state's shapes, else logged (training.resume).
- Failed asynchronous saves: CheckpointSaveError at the next log, checkpoint or end.
"""

import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import compiler, console, parallel, preemption
from latent_diffusion.training import resume
from latent_diffusion.training.batches import batch_iterator
from latent_diffusion.training.checkpoint import StageCheckpoints
from latent_diffusion.training.state import NONFINITE_METRIC

__all__ = ["Stage", "StepFn", "global_batch_size", "NonFiniteError", "batch_iterator", "compile_step", "train_stage",
           "loss_summary", "restore_trained", "latest_meta", "restore_ema_params", "trained_steps"]

# (state, batch, rng, *step_args) -> (state, {name: scalar}); rng is the stage's root key (fold in state.step);
# step_args are arrays the step reads but does not train (e.g. a frozen text encoder).
StepFn = Callable[..., tuple[Any, dict]]


class NonFiniteError(FloatingPointError):
  """Too many consecutive training steps had a non-finite loss or gradient norm."""


def global_batch_size(loop_config, data_config) -> int:
  """A stage's global training batch: its loop.batch_size, or config.data.batch_size where that is 0."""
  if loop_config.batch_size < 0:
    raise ValueError(f"A stage's loop.batch_size is {loop_config.batch_size}; expected a positive global batch "
                     f"size, or 0 for config.data.batch_size.")
  return loop_config.batch_size or data_config.batch_size


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
  meta: dict                          # JSON-able constants saved with every checkpoint ('config': the config's JSON)
  eval_fn: Callable[[Any], dict] | None = None   # state -> {name: float, or images [N, H, W, C] in [0, 1]}
  mesh: Any = None
  mesh_config: Any = None
  step_args: tuple = ()               # extra, read-only arguments of every step, already on the mesh
  step_args_shardings: tuple = ()
  learning_rate: Callable[[int], Any] | None = None   # optimizer step -> learning rate (logged to TensorBoard)


def compile_step(step_fn: StepFn, rng: jax.Array, state_shardings, mesh, mesh_config, step_args_shardings=()):
  """jit(state, batch, *step_args) -> (state, metrics): state sharded by its rules and donated, batch split
  over 'batch', step_args as given. The root key enters as a compile-time constant, identical on every process."""
  key_data = np.asarray(jax.random.key_data(rng))
  step = lambda state, batch, *args: step_fn(state, batch, jax.random.wrap_key_data(key_data), *args)
  return jax.jit(step, donate_argnums=0, compiler_options=compiler.jit_options(),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh, mesh_config), *step_args_shardings),
                 out_shardings=(state_shardings, parallel.replicated(mesh)))


def _new_tally(metrics: dict, sharding) -> dict:
  """Device-side running totals since the last log, placed like the metrics; 'streak' (consecutive
  non-finite steps) persists across logs."""
  zero = np.zeros((), np.int32)
  return jax.device_put({"sums": {k: np.zeros(v.shape, v.dtype) for k, v in metrics.items() if k != NONFINITE_METRIC},
                         "finite": zero, "nonfinite": zero, "streak": zero, "longest": zero}, sharding)


@jax.jit
def _add_to_tally(tally: dict, metrics: dict) -> dict:
  """One dispatch per step, no host sync. A step is non-finite if the guarded step says so (or, for
  a step function without the guard, if any metric is not finite); its metrics are left out of the means."""
  values = {k: v for k, v in metrics.items() if k != NONFINITE_METRIC}
  if NONFINITE_METRIC in metrics:
    bad = metrics[NONFINITE_METRIC] > 0
  else:
    bad = ~jnp.stack([jnp.all(jnp.isfinite(v)) for v in values.values()]).all()
  streak = jnp.where(bad, tally["streak"] + 1, 0)
  return {"sums": jax.tree.map(lambda s, v: s + jnp.where(bad, 0.0, v), tally["sums"], values),
          "finite": tally["finite"] + (~bad), "nonfinite": tally["nonfinite"] + bad, "streak": streak,
          "longest": jnp.maximum(tally["longest"], streak)}


@jax.jit
def _restart_tally(tally: dict) -> dict:
  return {**jax.tree.map(jnp.zeros_like, tally), "streak": tally["streak"]}


def _check_streak(stage: Stage, step: int, tally: dict, checkpoints: StageCheckpoints) -> None:
  limit = stage.loop_config.max_consecutive_nonfinite_steps
  longest = int(tally["longest"])
  if longest >= limit:
    checkpoints.wait()
    raise NonFiniteError(
        f"{stage.name}: {longest} consecutive training steps up to step {step} had a non-finite loss or gradient "
        f"norm (limit loop.max_consecutive_nonfinite_steps={limit}). Their updates were skipped and nothing was "
        f"saved after them: the latest checkpoint (step {checkpoints.latest_step()}) holds the last good state. "
        f"Lower the learning rate or check the data, then rerun to resume from it.")


def _log(stage: Stage, step: int, tally: dict, writer, history: list[dict]) -> dict:
  """Writes the means over the finite steps since the last log, the count of skipped ones and the learning rate;
  returns the means."""
  finite, skipped = int(tally["finite"]), int(tally["nonfinite"])
  scalars = {"train/nonfinite_steps": skipped}
  means = {}
  if stage.learning_rate is not None:
    scalars["train/learning_rate"] = float(stage.learning_rate(step - 1))   # the rate of this step's update
  if finite:
    means = {k: float(v) / finite for k, v in tally["sums"].items()}
    scalars.update({f"train/{k}": v for k, v in means.items()})
    history.append({"step": step, **means})
  if skipped:
    logging.warning("%s: %d non-finite step(s) skipped since the last log (at step %d, %d in a row).",
                    stage.name, skipped, step, int(tally["streak"]))
  writer.write_scalars(step, scalars)
  return means


def _resume(stage: Stage, checkpoints: StageCheckpoints) -> tuple[Any, dict, grain.DatasetIterator]:
  """(state, meta, batches) from the newest good checkpoint, or the stage's initial ones."""
  batches = batch_iterator(stage.dataset, stage.batch_size, stage.seed)
  same_processes = lambda saved: batches if saved.get("process_count") == jax.process_count() else None
  check = lambda step, saved, shapes: resume.check_resume(stage.name, step, saved, shapes, stage.meta, stage.state)
  restored = checkpoints.restore_newest_good(stage.state, data_iterator=same_processes, check=check)
  if restored is None:
    return stage.state, dict(stage.meta), batches
  state, saved_meta, iterator_restored = restored
  step = int(state.step)
  if not iterator_restored:
    logging.warning("%s: the checkpoint was written by %s processes, this run has %d: the data order restarts at "
                    "global batch %d (the same batches as an uninterrupted run, see training.batches).", stage.name,
                    saved_meta.get("process_count", "an unknown number of"), jax.process_count(), step)
    batches = batch_iterator(stage.dataset, stage.batch_size, stage.seed, start_batch=step)
  console.say(f"{stage.name}: resumed from checkpoint at step {step}.")
  # Constants the run started with (e.g. the latent scale factor) stay; the config is the accepted new one.
  meta = {**saved_meta, **{k: stage.meta[k] for k in ("config",) if k in stage.meta}}
  meta.pop("process_count", None)
  return state, meta, batches


def train_stage(stage: Stage) -> tuple[Any, dict, list[dict]]:
  """Trains `stage` to `loop_config.train_steps`, resuming from its newest good checkpoint.

  Returns (final state, the stage's meta as saved with the last checkpoint, the training metrics
  logged by this call as [{'step': int, name: mean over its finite steps since the previous log}]).
  Raises preemption.Preempted (a SystemExit) after saving on SIGTERM, NonFiniteError, and the
  errors of training.checkpoint and training.resume.
  """
  preemption.install()
  checkpoints = StageCheckpoints(stage.workdir / "checkpoints", keep=stage.loop_config.keep_checkpoints)
  try:
    return _train(stage, checkpoints)
  finally:
    checkpoints.close()


def _train(stage: Stage, checkpoints: StageCheckpoints) -> tuple[Any, dict, list[dict]]:
  cfg = stage.loop_config
  state, meta, batches = _resume(stage, checkpoints)
  start = int(state.step)
  if start >= cfg.train_steps:
    console.say(f"{stage.name}: already trained ({start} steps).")
    return state, meta, []
  console.say(f"{stage.name}: training steps {start + 1}..{cfg.train_steps} (compiling the step first)")

  # clu imports TensorFlow (seconds): only a job that trains pays for it, not encode or sample.
  from clu import metric_writers, periodic_actions  # pylint: disable=import-outside-toplevel

  batch_sharding = parallel.batch_sharding(stage.mesh, stage.mesh_config)
  step_fn = compile_step(stage.step_fn, stage.rng, stage.state_shardings, stage.mesh, stage.mesh_config,
                         stage.step_args_shardings)
  writer = metric_writers.create_default_writer(
      str(stage.workdir / "tensorboard"), just_logging=jax.process_index() > 0, collection=stage.name)
  progress = periodic_actions.ReportProgress(num_train_steps=cfg.train_steps, writer=writer,
                                             every_steps=cfg.log_every_steps)
  tally, history = None, []
  timer = _Rate()
  for step in range(start + 1, cfg.train_steps + 1):
    batch = parallel.global_batch(next(batches), batch_sharding)
    with jax.transfer_guard("disallow"):
      state, metrics = step_fn(state, batch, *stage.step_args)
    tally = _new_tally(metrics, parallel.replicated(stage.mesh)) if tally is None else tally
    with jax.transfer_guard("disallow"):
      tally = _add_to_tally(tally, metrics)
    progress(step)
    last = step == cfg.train_steps
    preempted = preemption.reached()   # every process, every step: they agree on the stopping step
    checkpoint_due = step % cfg.checkpoint_every_steps == 0 or last or preempted
    # Step 1 is logged too: a short run still reports its first and last loss. (Not the first step after a resume:
    # the logged windows, hence the logged means, of a resumed run stay those of an uninterrupted one.)
    log_due = step % cfg.log_every_steps == 0 or last or step == 1
    if log_due or checkpoint_due:
      totals = jax.device_get(tally)
      _check_streak(stage, step, totals, checkpoints)
      checkpoints.check_for_errors()
      if log_due:
        means = _log(stage, step, totals, writer, history)
        tally = _restart_tally(tally)
        console.say(console.progress_line(stage.name, step, cfg.train_steps, timer.rate(step),
                                          {k: means[k] for k in ("loss",) if k in means}))
    if stage.eval_fn is not None and not preempted and (step % cfg.eval_every_steps == 0 or last):
      console.say(f"{stage.name}: evaluating at step {step}")
      write_evaluation(writer, step, stage.eval_fn(state))
      timer.restart(step)
    if checkpoint_due:
      checkpoints.save(step, state, meta, batches)
    if preempted and not last:
      writer.flush()
      checkpoints.wait()
      raise preemption.Preempted(stage.name, step)
  writer.flush()
  checkpoints.wait()
  return state, meta, history


class _Rate:
  """Steps per second of training since the first step completed (compilation excluded); evaluations pause it."""

  def __init__(self):
    self.since, self.first_step = None, None

  def rate(self, step: int) -> float | None:
    now = time.perf_counter()
    if self.since is None:
      self.since, self.first_step = now, step
      return None
    done = step - self.first_step
    return done / (now - self.since) if done > 0 and now > self.since else None

  def restart(self, step: int) -> None:
    """Restart the clock at `step` (after an evaluation, whose time is not training's)."""
    self.since, self.first_step = time.perf_counter(), step


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
  """(state, meta) of the newest good checkpoint of a finished (or interrupted) stage, for later stages."""
  return _newest_readable(workdir, lambda checkpoints, step: checkpoints.restore(state_template, step))


def latest_meta(workdir: pathlib.Path) -> dict | None:
  """The metadata of a stage's newest readable checkpoint, or None if it has none yet."""
  return _newest_readable(workdir, lambda checkpoints, step: checkpoints.restore_meta(step), required=False)


def trained_steps(workdir: pathlib.Path) -> int | None:
  """The step of a stage's newest readable checkpoint (its metadata is read, no arrays), or None without one."""
  return _newest_readable(workdir, lambda checkpoints, step: checkpoints.restore_meta(step) and step, required=False)


def restore_ema_params(workdir: pathlib.Path, params_template: Any) -> Any:
  """Only the EMA parameters of a stage's newest good checkpoint (what sampling uses), restored into
  the shapes and shardings of `params_template` (arrays, or jax.ShapeDtypeStruct with shardings, e.g.
  jax.eval_shape of the init with the state's param shardings): no optimizer state is read or built."""
  return _newest_readable(workdir, lambda checkpoints, step: checkpoints.restore_subtree(
      "ema_params", params_template, step))


def _newest_readable(workdir: pathlib.Path, read: Callable[[StageCheckpoints, int], Any], required: bool = True):
  checkpoints = StageCheckpoints(workdir / "checkpoints", read_only=True)
  try:
    value = checkpoints.newest_readable(lambda step: read(checkpoints, step))
  finally:
    checkpoints.close()
  if value is None and required:
    raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}; train the stage first.")
  return value
