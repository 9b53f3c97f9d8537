"""Resuming with a config that differs from the checkpoint's: refuse what changes the state's shapes,
accept and log the rest.

The judge is the state itself: the arrays the current config builds (the template) against the
arrays the checkpoint holds (its metadata, read before any array). Different shapes, dtypes or
tree structure (model widths, latent channels, an optimizer with or without clipping) are refused
before anything is written, naming every config key that differs with both values. Anything else
(more train steps, log or checkpoint intervals, another mesh: the state is resharded) is accepted
and each differing key is logged.
"""

import json
from typing import Any

import jax
import numpy as np
from absl import logging

from latent_diffusion.training.checkpoint import path_name

_ABSENT = "<absent>"


class ConfigMismatchError(ValueError):
  """The run's config is incompatible with its checkpoint (the state's shapes would change)."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'ldm.model.model_channels': 16, ...} of a nested dict (a config's JSON)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return flat


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """[(dotted key, checkpoint value, current value)] of every key whose value differs, sorted."""
  old, new = flatten(saved), flatten(current)
  return [(key, old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(old.keys() | new.keys())
          if old.get(key, _ABSENT) != new.get(key, _ABSENT)]


def shape_differences(saved: dict[str, tuple[tuple[int, ...], str]], template: Any) -> list[str]:
  """Arrays that differ between a checkpoint's state and `template`: 'path: checkpoint (8, 4) float32, now ...'."""
  now = {path_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
         for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
  describe = lambda entry: "absent" if entry is None else f"{entry[0]} {entry[1]}"
  return [f"{name}: checkpoint {describe(saved.get(name))}, now {describe(now.get(name))}"
          for name in sorted(saved.keys() | now.keys()) if saved.get(name) != now.get(name)]


def check_resume(stage: str, step: int, saved_meta: dict, saved_shapes: dict, current_meta: dict,
                 template: Any) -> None:
  """Raises ConfigMismatchError if the checkpoint's state does not fit `template`; logs accepted changes."""
  differences = []
  if "config" in saved_meta and "config" in current_meta:
    differences = config_differences(json.loads(saved_meta["config"]), json.loads(current_meta["config"]))
  listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in differences) or "none"
  arrays = shape_differences(saved_shapes, template)
  if arrays:
    shown = "; ".join(arrays[:8]) + (f"; and {len(arrays) - 8} more" if len(arrays) > 8 else "")
    raise ConfigMismatchError(
        f"{stage}: cannot resume from checkpoint step {step}: the config changes the shapes of the state "
        f"({len(arrays)} arrays differ: {shown}). Config keys that differ from the checkpoint's: {listed}. "
        f"Restore those values, or start the run in a new workdir.")
  for key, old, new in differences:
    logging.info("%s: resuming step %d with config.%s changed from %r to %r (accepted: the state's shapes are "
                 "unchanged).", stage, step, key, old, new)
