"""Tensors between PyTorch state dicts and our Flax parameter trees.

PyTorch checkpoints (diffusers, transformers, CompVis) name tensors with dotted keys and store
convolutions as [O, I, kh, kw] and linears as [out, in]; our params are nested dicts with NHWC
conv kernels [kh, kw, I, O] and dense kernels [in, out]. A converter is a list of `Rule`s built
from a model's config; the same list imports and exports, so a round trip is lossless by design.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np

# Layout name -> (torch array -> flax array, flax array -> torch array).
LAYOUTS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "copy": (lambda w: w, lambda w: w),
    "conv": (lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1)),
    "linear": (lambda w: w.T, lambda w: w.T),
    # A 1x1 conv [O, I, 1, 1] stored where we use a dense [I, O] (CompVis attention q/k/v/proj).
    "conv1x1_linear": (lambda w: w[:, :, 0, 0].T, lambda w: w.T[:, :, None, None]),
}


class WeightImportError(ValueError):
  """A checkpoint does not match the model it is loaded into (names and shapes say where)."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """One tensor: our parameter at `path` is the checkpoint's `key` in `layout`."""
  path: tuple[str, ...]
  key: str
  layout: str = "copy"

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"Unknown layout {self.layout!r} for {self.key}; known: {sorted(LAYOUTS)}.")


def _split(prefix: str) -> tuple[str, ...]:
  return tuple(prefix.split("/")) if prefix else ()


def _join(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


def conv(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
  """A Flax nn.Conv at '/'-separated `ours` <-> torch nn.Conv2d at dotted `theirs`."""
  rules = [Rule(_split(ours) + ("kernel",), _join(theirs, "weight"), "conv")]
  return rules + ([Rule(_split(ours) + ("bias",), _join(theirs, "bias"))] if bias else [])


def dense(ours: str, theirs: str, bias: bool = True, layout: str = "linear") -> list[Rule]:
  """A Flax nn.Dense <-> torch nn.Linear (or a 1x1 conv with layout='conv1x1_linear')."""
  rules = [Rule(_split(ours) + ("kernel",), _join(theirs, "weight"), layout)]
  return rules + ([Rule(_split(ours) + ("bias",), _join(theirs, "bias"))] if bias else [])


def norm(ours: str, theirs: str) -> list[Rule]:
  """A Flax GroupNorm / LayerNorm (scale, bias) <-> torch norm (weight, bias)."""
  return [Rule(_split(ours) + ("scale",), _join(theirs, "weight")), Rule(_split(ours) + ("bias",), _join(theirs, "bias"))]


def embedding(ours: str, theirs: str) -> list[Rule]:
  """A Flax nn.Embed table <-> torch nn.Embedding weight, both [vocab, dim]."""
  return [Rule(_split(ours) + ("embedding",), _join(theirs, "weight"))]


def prefixed(rules: Iterable[Rule], ours: str, theirs: str) -> list[Rule]:
  """The same rules under a parent module: path ours/..., key theirs.... (e.g. 'unet', 'model.')."""
  return [Rule(_split(ours) + r.path, _join(theirs, r.key), r.layout) for r in rules]


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (name,)))
    else:
      flat[prefix + (name,)] = value
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _listing(title: str, names: list[str], limit: int = 25) -> str:
  shown = "\n    ".join(names[:limit])
  more = f"\n    ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"  {title} ({len(names)}):\n    {shown}{more}"


def import_params(state_dict: Mapping[str, np.ndarray], rules: list[Rule], expected: Mapping, *, source: str,
                  ignore: Callable[[str], bool] = lambda key: False) -> dict:
  """Our param tree from a checkpoint's tensors, float32.

  expected: the model's abstract params (e.g. `jax.eval_shape(model.init, ...)["params"]`),
  boxed or not. Refuses, naming every offender, when the checkpoint lacks a tensor the rules
  need, holds one no rule reads (unless `ignore(key)`), or a tensor has the wrong shape.
  """
  wanted = {path: tuple(leaf.shape) for path, leaf in _flatten(nn.unbox(expected)).items()}
  by_path = {rule.path: rule for rule in rules}
  uncovered = sorted("/".join(p) for p in wanted.keys() - by_path.keys())
  if uncovered or len(by_path) != len(rules) or by_path.keys() - wanted.keys():
    stray = sorted("/".join(p) for p in by_path.keys() - wanted.keys())
    raise ValueError(f"Converter bug for {source}: rules do not match the model's parameters.\n"
                     + _listing("parameters without a rule", uncovered) + "\n" + _listing("rules without a parameter", stray))
  missing = sorted(rule.key for rule in rules if rule.key not in state_dict)
  read = {rule.key for rule in rules}
  unexpected = sorted(key for key in state_dict if key not in read and not ignore(key))
  params, mismatched = {}, []
  for rule in rules:
    if rule.key not in state_dict:
      continue
    try:
      value = LAYOUTS[rule.layout][0](np.asarray(state_dict[rule.key], np.float32))
    except (ValueError, IndexError):  # wrong rank for the layout's transpose
      value = np.zeros(0)
    if value.shape != wanted[rule.path]:
      mismatched.append(f"{rule.key}: checkpoint {tuple(state_dict[rule.key].shape)} ({rule.layout}), "
                        f"model {'/'.join(rule.path)} wants {wanted[rule.path]}")
      continue
    params[rule.path] = np.ascontiguousarray(value)
  if missing or unexpected or mismatched:
    parts = [f"Cannot load {source}: the checkpoint does not match the model configuration."]
    parts += [_listing(title, names) for title, names in
              (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if names]
    parts.append("  Check that the config matches the checkpoint (it is derived from config.json / key shapes); "
                 "nothing was loaded.")
    raise WeightImportError("\n".join(parts))
  return _unflatten(params)


def export_params(params: Mapping, rules: list[Rule]) -> dict[str, np.ndarray]:
  """The checkpoint tensors (torch names and layouts, float32) of our param tree."""
  flat = _flatten(nn.unbox(params))
  missing = sorted("/".join(rule.path) for rule in rules if rule.path not in flat)
  if missing:
    raise ValueError("Cannot export: the parameter tree lacks\n" + _listing("parameters", missing))
  return {rule.key: np.ascontiguousarray(LAYOUTS[rule.layout][1](np.asarray(jax.device_get(flat[rule.path]),
                                                                            np.float32)))
          for rule in rules}
