"""Orbax checkpoints of one training stage: train state plus JSON metadata in one step folder.

The metadata holds what restoring needs besides arrays: the data-iterator position (so a resumed
run sees the batches an uninterrupted one would), the stage's derived constants (e.g. the
latent scale factor) and the config that produced the run.
"""

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class StageCheckpoints:
  """Save / restore the latest (state, meta) of a stage under `directory`."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 2, async_save: bool = True):
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)))

  def restore(self, state_template: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores into the shapes, dtypes and shardings of `state_template` (latest step by default)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_template), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_subtree(self, name: str, template: Any, step: int | None = None) -> Any:
    """Only the field `name` (e.g. 'ema_params') of the saved state, into `template`'s shapes and shardings
    (jax.ShapeDtypeStruct leaves with `sharding`); nothing else of the state is read."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}.")
    path = pathlib.Path(self._manager.directory) / str(step) / "state"
    item = {name: template}
    args = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(path, args=args)[name]

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
