"""Orbax checkpoints of one training stage, and what to do when one is damaged.

A step folder `checkpoints/<step>/` holds three items:
  state/          the TrainState arrays (step, params, EMA, optimizer state), each process writing its
                  shards (OCDBT); restoring reshards them onto the template's mesh
  data_iterator/  every process's grain iterator position, process_<i>-of-<n>.json (grain's handler)
  meta/           JSON: the stage's derived constants (e.g. the latent scale factor), the config that
                  produced the run and the process count

Saves are asynchronous; their errors surface at the next `check_for_errors`, `save` or `wait` as
CheckpointSaveError. `restore_newest_good` walks the steps newest first: a step whose files are
truncated or missing, or that was never committed, is skipped with a warning naming it, and the
newest step that reads back completely is restored (the damaged newer ones are then moved to
`checkpoints_damaged/`); if none reads back, NoUsableCheckpointError lists them and nothing moves.
"""

import pathlib
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

# Marks the temporary folder of a save that never committed (orbax's atomic rename).
_UNCOMMITTED = ".orbax-checkpoint-tmp"


class CheckpointSaveError(RuntimeError):
  """An asynchronous checkpoint save failed; the run stops (the previous checkpoints are intact)."""


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist but none reads back; never silently start from scratch over them."""


class _Manager(ocp.CheckpointManager):
  """orbax's manager without its own preemption query: latent_diffusion.preemption runs the protocol
  once per train step with its own call count, which orbax's query (by checkpoint step) would disturb."""

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


def _same_everywhere(ok: bool) -> bool:
  """True only if `ok` on every process (a step damaged for one process is damaged for all)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).min())


class StageCheckpoints:
  """Save / restore (state, data iterator, meta) of a stage under `directory`."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 2, async_save: bool = True, read_only: bool = False):
    """read_only: for readers of another job's checkpoints (sampling, later stages), which must not
    remove a save in progress; the training loop, which holds the workdir, cleans up."""
    self.directory = pathlib.Path(directory).absolute()
    owner = not read_only and self.directory.is_dir()
    uncommitted = sorted(p.name for p in self.directory.glob(f"*{_UNCOMMITTED}*")) if owner else []
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                             cleanup_tmp_directories=True)
    self._manager = _Manager(self.directory, options=options, item_handlers=dict(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
        data_iterator=grain.checkpoint.CheckpointHandler()))
    self._pending = None   # the step of a save not yet confirmed committed
    if not owner:
      return
    # Step folders orbax does not list were never committed: on local disks a temporary name (removed
    # by the cleanup above), on object stores a folder without commit_success.txt.
    listed = {str(step) for step in self._manager.all_steps()}
    uncommitted += sorted(p.name for p in self.directory.iterdir() if p.name.isdigit() and p.name not in listed)
    for name in uncommitted:
      logging.warning("Checkpoint step %s in %s was never committed (a save cut short); skipped.",
                      name.split(".")[0], self.directory)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, data_iterator: grain.DatasetIterator | None = None) -> None:
    """Starts an asynchronous save; first raises CheckpointSaveError if an earlier one failed."""
    self.wait()   # orbax would wait for the previous save anyway; this surfaces its error
    items = dict(state=ocp.args.StandardSave(state),
                 meta=ocp.args.JsonSave({**meta, "process_count": jax.process_count()}))
    if data_iterator is not None:
      items["data_iterator"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      self._manager.save(step, args=ocp.args.Composite(**items))
    except Exception as error:  # pylint: disable=broad-except  # orbax and tensorstore raise many types
      raise CheckpointSaveError(f"Saving checkpoint step {step} in {self.directory} failed: "
                                f"{type(error).__name__}: {error}") from error
    self._pending = step

  def restore(self, state_template: Any, step: int | None = None,
              data_iterator: grain.DatasetIterator | None = None) -> tuple[Any, dict]:
    """Restores into the shapes, dtypes and shardings of `state_template` (latest step by default) and,
    if given, sets `data_iterator` to the saved position. Raises whatever orbax raises on damage."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    items = dict(state=ocp.args.StandardRestore(state_template), meta=ocp.args.JsonRestore())
    if data_iterator is not None:
      items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["meta"]

  def restore_subtree(self, name: str, template: Any, step: int | None = None) -> Any:
    """Only the field `name` (e.g. 'ema_params') of the saved state, into `template`'s shapes and shardings
    (jax.ShapeDtypeStruct leaves with `sharding`); nothing else of the state is read."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    path = self.directory / str(step) / "state"
    item = {name: template}
    args = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(path, args=args)[name]

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def state_shapes(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """'params/conv_in/kernel' -> (shape, dtype name) of every array of a step's state, from its metadata."""
    tree = self._manager.item_metadata(step)["state"].tree
    return {path_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

  def restore_newest_good(self, state_template: Any, data_iterator: Callable[[dict], Any] | None = None,
                          check: Callable[[int, dict, dict], None] | None = None) -> tuple[Any, dict, bool] | None:
    """(state, meta, whether the iterator was restored) of the newest step that reads back completely;
    None if there is no checkpoint. For the run that owns the directory: the damaged steps newer than
    the restored one are moved aside (a save may reuse their numbers).

    check(step, meta, state_shapes) runs before a step's arrays are read and may refuse the resume
    (e.g. a changed config) by raising: that error propagates, it is not damage. data_iterator(meta)
    is the iterator to set to the saved position, or None to leave it (e.g. the process count
    changed).
    """
    damaged = []
    for step in reversed(self.all_steps()):
      failure = None
      try:
        meta, shapes = self.restore_meta(step), self.state_shapes(step)
      except Exception as error:  # pylint: disable=broad-except  # orbax raises many types on bad files
        failure = error
      if _same_everywhere(failure is None):
        if check is not None:
          check(step, meta, shapes)
        iterator = data_iterator(meta) if data_iterator is not None else None
        try:
          state, meta = self.restore(state_template, step, iterator)
        except Exception as error:  # pylint: disable=broad-except
          failure = error
        if _same_everywhere(failure is None):
          for newer, _ in damaged:   # only once a good step is found: a systematic failure moves nothing
            self._set_aside(newer)
          return state, meta, iterator is not None
      damaged.append(self._skip(step, failure))
    self._raise_if_all_damaged(damaged)
    return None

  def newest_readable(self, read: Callable[[int], Any]) -> Any:
    """read(step) for the newest step where it succeeds on every process (damaged steps are skipped with
    a warning but left in place: for readers such as sampling); None if there is no checkpoint."""
    damaged = []
    for step in reversed(self.all_steps()):
      failure, value = None, None
      try:
        value = read(step)
      except Exception as error:  # pylint: disable=broad-except  # orbax raises many types on bad files
        failure = error
      if _same_everywhere(failure is None):
        return value
      damaged.append(self._skip(step, failure))
    self._raise_if_all_damaged(damaged)
    return None

  def _skip(self, step: int, failure: Exception | None) -> tuple[int, str]:
    reason = "damaged on another process" if failure is None else f"{type(failure).__name__}: {str(failure)[:300]}"
    logging.warning("Checkpoint step %d in %s is damaged (%s); skipping it and trying the previous step.",
                    step, self.directory, reason)
    return step, reason

  def _raise_if_all_damaged(self, damaged: list[tuple[int, str]]) -> None:
    if damaged:
      raise NoUsableCheckpointError(
          f"No checkpoint in {self.directory} reads back; damaged steps: {damaged}. Restore a good copy, or move "
          f"the folder away to train from scratch.")

  def _set_aside(self, step: int) -> None:
    """Moves a damaged step to checkpoints_damaged/ (kept for inspection): a later save may reuse its number."""
    if jax.process_index() == 0:
      aside = self.directory.parent / "checkpoints_damaged"
      aside.mkdir(exist_ok=True)
      (self.directory / str(step)).rename(aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
    self._manager.reload()

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if the last asynchronous save has finished without committing
    (orbax's own finalize thread logs such errors and leaves them to the next wait)."""
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until the pending save is written; raises CheckpointSaveError if it failed."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except  # whatever the save raised
      raise CheckpointSaveError(f"Saving checkpoint step {step} in {self.directory} failed: "
                                f"{type(error).__name__}: {error}") from error
    if step is not None and not (self.directory / str(step)).is_dir():
      raise CheckpointSaveError(f"Saving checkpoint step {step} in {self.directory} failed: it was never committed "
                                f"(see the orbax errors logged above).")

  def close(self) -> None:
    self._manager.close()


def path_name(path) -> str:
  """'params/conv_in/kernel' for a tree path (dict keys, attributes and sequence indices alike)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

