"""Every config option the code reads is declared in configs/base.py (no hidden defaults in code).

The package's source is parsed (not run): each attribute chain read from a config variable (`config.ldm.loop.
train_steps`, `data_config.crop`, ...) must name a field of configs/base.py's config, and no config is read with
`.get(...)`, which would hide an undeclared option behind a default.
"""

import ast
import pathlib

import ml_collections
import pytest

from latent_diffusion.configs import base

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "latent_diffusion"
# Variable name -> the config section it holds, wherever the package uses that name.
ROOTS = {"config": "", "data_config": "data", "encode_config": "encode", "mesh_config": "mesh",
         "optim_config": "ldm.optim", "loop_config": "ldm.loop"}
# ConfigDict methods: a chain that reaches one stops being a key path.
METHODS = {name for name in dir(ml_collections.ConfigDict) if not name.startswith("__")}


def _chains(tree: ast.AST):
  """(root variable, [attribute names], line, called_get) of every `root.a.b...` read in the module."""
  for node in ast.walk(tree):
    if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "_parent", None), ast.Attribute):
      continue
    names, inner = [], node
    while isinstance(inner, ast.Attribute):
      names.insert(0, inner.attr)
      inner = inner.value
    if isinstance(inner, ast.Name) and inner.id in ROOTS:
      yield inner.id, names, node.lineno


def _mark_parents(tree: ast.AST) -> None:
  for parent in ast.walk(tree):
    for child in ast.iter_child_nodes(parent):
      child._parent = parent  # pylint: disable=protected-access


def _resolve(config: ml_collections.ConfigDict, path: list[str]) -> str | None:
  """None if `path` names declared fields (up to a method or a non-group value), else what is missing."""
  node = config
  for depth, name in enumerate(path):
    if name in METHODS:
      return None
    if not isinstance(node, ml_collections.ConfigDict):
      return None   # a value's own attribute (e.g. a tuple's .index)
    if name not in node:
      return ".".join(path[:depth + 1])
    node = node[name]
  return None


def test_every_config_read_is_declared_in_base():
  config = base.get_config()
  undeclared, hidden_defaults = [], []
  for file in sorted(PACKAGE.rglob("*.py")):
    if file.parent.name == "weights":   # reads other ecosystems' config.json files (diffusers, transformers), not ours
      continue
    tree = ast.parse(file.read_text())
    _mark_parents(tree)
    for root, names, line in _chains(tree):
      prefix = [p for p in ROOTS[root].split(".") if p]
      where = f"{file.relative_to(PACKAGE.parent)}:{line}"
      if names[-1] == "get" and len(names) >= 1:
        hidden_defaults.append(f"{where} {root}.{'.'.join(names)}(...)")
        continue
      missing = _resolve(config, prefix + names)
      if missing:
        undeclared.append(f"{where} {root}.{'.'.join(names)} (config.{missing})")
  assert not hidden_defaults, f"config read with .get() (declare the option in configs/base.py): {hidden_defaults}"
  assert not undeclared, f"config options read but not declared in configs/base.py: {undeclared}"


@pytest.mark.parametrize("source, expected", [("config.data.no_such_option", "config.data.no_such_option"),
                                              ("data_config.get('crop', 'center')", ".get")])
def test_the_scan_catches_undeclared_reads(source, expected):
  """The scan is not vacuous: an undeclared read and a .get() read are both found."""
  tree = ast.parse(source)
  _mark_parents(tree)
  (root, names, _), = list(_chains(tree))
  prefix = [p for p in ROOTS[root].split(".") if p]
  if expected == ".get":
    assert names[-1] == "get"
  else:
    assert _resolve(base.get_config(), prefix + names) == "data.no_such_option"
