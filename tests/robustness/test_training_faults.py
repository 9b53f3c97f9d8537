"""The training loop's fault guarantees on a toy stage (real state, step, checkpoint and loop code):
non-finite steps, damaged checkpoints, failed asynchronous saves, resuming with a changed config."""

import json
import logging
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from latent_diffusion.training import loop, resume
from latent_diffusion.training import state as state_lib
from latent_diffusion.training.checkpoint import CheckpointSaveError, NoUsableCheckpointError, StageCheckpoints
from tests.robustness.toy_stage import EXAMPLES, toy_config, toy_data, toy_stage

STEPS = 12   # 2 epochs of 6 batches of 16


def _params(state) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree.leaves((state.params, state.ema_params, state.opt_state))]


def _assert_same_state(a, b):
  for x, y in zip(_params(a), _params(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(workdir, final state, history) of 12 steps with checkpoints at 4, 8 and 12 (all kept)."""
  workdir = tmp_path_factory.mktemp("toy_uninterrupted")
  config = toy_config(train_steps=STEPS)
  config.toy.loop.keep_checkpoints = 3
  state, _, history = loop.train_stage(toy_stage(config, workdir))
  assert [h["step"] for h in history] == list(range(1, STEPS + 1))
  return workdir, state, history


def test_a_nonfinite_step_leaves_params_ema_and_optimizer_state_unchanged():
  stage = toy_stage(toy_config(), "/nonexistent")
  step = jax.jit(lambda s, b: stage.step_fn(s, b, stage.rng))
  arrays = toy_data(poisoned=(0,))
  batch = {k: v[:16] for k, v in arrays.items()}
  before = jax.tree.map(np.asarray, stage.state)
  after, metrics = step(stage.state, batch)
  assert float(metrics[state_lib.NONFINITE_METRIC]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  _assert_same_state(before, after)
  assert int(after.step) == 1   # the batch was consumed
  clean = after
  for rows in (slice(16, 32), slice(32, 48)):   # warmup: the learning rate is 0 at optimizer step 0
    clean, metrics = step(clean, {k: v[rows] for k, v in arrays.items()})
    assert float(metrics[state_lib.NONFINITE_METRIC]) == 0.0
  assert int(clean.step) == 3
  assert not np.array_equal(np.asarray(clean.params["hidden"]["kernel"]), before.params["hidden"]["kernel"])


def test_nan_batches_are_skipped_counted_and_logged(tmp_path, caplog):
  """Example 5 carries a NaN: the one batch per epoch that holds it is skipped (2 of 12 steps)."""
  caplog.set_level(logging.WARNING)
  state, _, history = loop.train_stage(toy_stage(toy_config(train_steps=STEPS), tmp_path,
                                                 arrays=toy_data(poisoned=(5,))))
  assert int(state.step) == STEPS and all(np.isfinite(leaf).all() for leaf in _params(state))
  logged = {h["step"] for h in history}
  assert len(logged) == STEPS - 2   # the skipped steps have no finite loss to log
  assert all(np.isfinite(h["loss"]) for h in history)
  skipped = sorted(set(range(1, STEPS + 1)) - logged)
  assert sum("non-finite step(s) skipped" in r.getMessage() for r in caplog.records) == 2, skipped


def test_consecutive_nonfinite_steps_stop_the_run_keeping_the_last_good_checkpoint(uninterrupted, tmp_path):
  source, _, _ = uninterrupted
  shutil.copytree(source / "toy", tmp_path / "toy")
  shutil.rmtree(tmp_path / "toy" / "checkpoints" / "12")
  good, _ = loop.restore_trained(tmp_path / "toy", toy_stage(toy_config(), tmp_path).state)
  assert int(good.step) == 8
  config = toy_config(train_steps=40)
  config.toy.loop.max_consecutive_nonfinite_steps = 3
  with pytest.raises(loop.NonFiniteError, match=r"3 consecutive training steps up to step 11.*latest checkpoint "
                                                r"\(step 8\)"):
    loop.train_stage(toy_stage(config, tmp_path, arrays=toy_data(poisoned=tuple(range(EXAMPLES)))))
  checkpoints = StageCheckpoints(tmp_path / "toy" / "checkpoints", read_only=True)
  assert checkpoints.all_steps() == [4, 8]   # nothing saved after the non-finite steps
  checkpoints.close()
  kept, _ = loop.restore_trained(tmp_path / "toy", toy_stage(toy_config(), tmp_path).state)
  _assert_same_state(kept, good)


def _truncate_data_files(step_dir):
  for path in (step_dir / "state" / "d").iterdir():
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_manifest(step_dir):
  (step_dir / "state" / "manifest.ocdbt").unlink()


def _uncommit(step_dir):
  step_dir.rename(step_dir.with_name(f"{step_dir.name}.orbax-checkpoint-tmp-1234"))


def _truncate_iterator_state(step_dir):
  path = next((step_dir / "data_iterator").glob("process_*.json"))
  path.write_text(path.read_text()[:5])


@pytest.mark.parametrize("damage", [_truncate_data_files, _delete_manifest, _uncommit, _truncate_iterator_state])
def test_a_damaged_latest_step_is_skipped_with_a_warning_and_the_previous_one_resumes_exactly(
    uninterrupted, tmp_path, caplog, capsys, damage):
  source, reference, history = uninterrupted
  shutil.copytree(source / "toy", tmp_path / "toy")
  damage(tmp_path / "toy" / "checkpoints" / "12")
  caplog.set_level(logging.INFO)
  config = toy_config(train_steps=STEPS)
  state, _, resumed_history = loop.train_stage(toy_stage(config, tmp_path))
  messages = " ".join(r.getMessage() for r in caplog.records)
  if damage is _uncommit:
    assert "Checkpoint step 12 in" in messages and "was never committed" in messages
  else:
    assert "Checkpoint step 12 in" in messages and "is damaged" in messages
    assert list((tmp_path / "toy" / "checkpoints_damaged").glob("12-*"))   # kept aside for inspection
  assert "toy: resumed from checkpoint at step 8." in capsys.readouterr().err    # a console line, not a log record
  assert [h["step"] for h in resumed_history] == [9, 10, 11, 12]
  assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history[8:]]
  _assert_same_state(state, reference)   # bitwise: the same batches and keys after the resume


def test_every_step_damaged_is_a_named_error_not_a_fresh_start(uninterrupted, tmp_path):
  source, _, _ = uninterrupted
  shutil.copytree(source / "toy", tmp_path / "toy")
  for step in (4, 8, 12):
    _delete_manifest(tmp_path / "toy" / "checkpoints" / str(step))
  with pytest.raises(NoUsableCheckpointError, match=r"damaged steps: \[\(12, .*\(8, .*\(4, "):
    loop.train_stage(toy_stage(toy_config(train_steps=STEPS), tmp_path))


def test_a_failed_asynchronous_save_stops_the_run(tmp_path, monkeypatch):
  class FailingCommit:
    def result(self, timeout=None):
      raise OSError(28, "No space left on device (injected)")

  original = ocp.StandardCheckpointHandler.async_save

  async def failing_save(self, *args, **kwargs):
    return list(await original(self, *args, **kwargs) or []) + [FailingCommit()]

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_save)
  with pytest.raises(CheckpointSaveError, match=r"Saving checkpoint step 4 in .* failed: OSError.*No space left"):
    loop.train_stage(toy_stage(toy_config(train_steps=STEPS), tmp_path))


def test_a_shape_changing_config_is_refused_before_anything_is_written(uninterrupted, tmp_path):
  source, _, _ = uninterrupted
  shutil.copytree(source / "toy", tmp_path / "toy")
  before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
  config = toy_config(width=48, train_steps=20)
  config.toy.optim.grad_clip = 0.0   # also changes the optimizer state's structure
  with pytest.raises(resume.ConfigMismatchError) as refused:
    loop.train_stage(toy_stage(config, tmp_path))
  message = str(refused.value)
  assert "cannot resume from checkpoint step 12" in message
  assert "toy.width: checkpoint 32, now 48" in message
  assert "toy.optim.grad_clip: checkpoint 1.0, now 0.0" in message
  assert "toy.loop.train_steps: checkpoint 12, now 20" in message
  assert "params/hidden/kernel: checkpoint (8, 32) float32, now (8, 48) float32" in message
  assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_harmless_config_changes_are_accepted_and_logged(uninterrupted, tmp_path, caplog):
  source, _, _ = uninterrupted
  shutil.copytree(source / "toy", tmp_path / "toy")
  caplog.set_level(logging.INFO)
  config = toy_config(train_steps=14, log_every_steps=2)
  state, _, history = loop.train_stage(toy_stage(config, tmp_path))
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert "config.toy.loop.train_steps changed from 12 to 14 (accepted" in messages
  assert "config.toy.loop.log_every_steps changed from 1 to 2 (accepted" in messages
  assert int(state.step) == 14 and [h["step"] for h in history] == [14]


def test_readers_skip_a_damaged_step_without_moving_it(uninterrupted, tmp_path, caplog):
  """restore_trained / latest_meta / restore_ema_params (sampling, later stages) fall back to the
  previous step but leave the damaged one where it is: they do not own the run's directory."""
  source, reference, _ = uninterrupted
  shutil.copytree(source / "toy", tmp_path / "toy")
  _delete_manifest(tmp_path / "toy" / "checkpoints" / "12")
  template = toy_stage(toy_config(), tmp_path).state
  state, _ = loop.restore_trained(tmp_path / "toy", template)
  assert int(state.step) == 8 and "Checkpoint step 12 in" in caplog.text
  assert (tmp_path / "toy" / "checkpoints" / "12").is_dir() and not (tmp_path / "toy" / "checkpoints_damaged").exists()
  assert json.loads(loop.latest_meta(tmp_path / "toy")["config"])["toy"]["width"] == 32
  ema = loop.restore_ema_params(source / "toy", template.params)
  for ours, ref in zip(jax.tree.leaves(ema), jax.tree.leaves(reference.ema_params), strict=True):
    np.testing.assert_array_equal(ours, ref)


def test_restore_ema_params_reads_only_the_ema_subtree(uninterrupted, monkeypatch):
  """Partial restore from abstract shapes: no optimizer state is built or read."""
  source, reference, _ = uninterrupted
  stage = toy_stage(toy_config(), "/nonexistent")
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), stage.state.params,
                          stage.state_shardings.params)
  read = []
  original = ocp.PyTreeCheckpointer.restore
  monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore",
                      lambda self, directory, args=None: read.append(args.item) or original(self, directory, args=args))
  ema = loop.restore_ema_params(source / "toy", abstract)
  assert [list(item) for item in read] == [["ema_params"]]
  for ours, ref in zip(jax.tree.leaves(ema), jax.tree.leaves(reference.ema_params), strict=True):
    np.testing.assert_array_equal(ours, ref)
