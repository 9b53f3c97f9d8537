"""Experiment configs: load `configs/<name>.py`, apply `--config.a.b=value` overrides, fail fast.

Every CLI accepts `--config=PATH[:ARG]` plus any number of `--config.<dotted.key>=<value>`.
The configs shipped with the package (configs/, importable as latent_diffusion.configs) are found from any
directory as `configs/<name>.py`; any other path is read as given.
An unknown key or a value of the wrong type raises `ConfigError` naming the key before any work
starts (ml_collections' own flag parser reports unknown keys only as a bare AttributeError).
"""

import ast
import difflib
import importlib.util
import pathlib
import sys
from collections.abc import Sequence

import ml_collections

CONFIG_FLAG = "--config"
# The configs shipped inside the package; `configs/<name>.py` names one of them from any directory.
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
  """A config file, key or value is wrong; the message says which and how to fix it."""


def resolve_config_path(path: str) -> pathlib.Path:
  """The config file `path` names: the file itself if it exists, else `configs/<name>.py` in the package."""
  file = pathlib.Path(path)
  if file.is_file():
    return file
  parts = file.parts
  if len(parts) > 1 and parts[0] == "configs" and (PACKAGED_CONFIGS.joinpath(*parts[1:])).is_file():
    return PACKAGED_CONFIGS.joinpath(*parts[1:])
  shipped = ", ".join(f"configs/{p.name}" for p in sorted(PACKAGED_CONFIGS.glob("[!_]*.py")))
  raise ConfigError(f"--config={path}: no such config file {path!r}; give a path to a config file or one of the "
                    f"packaged configs: {shipped}.")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` (or `get_config(arg)`) of the file named by `spec` = 'PATH[:ARG]'."""
  path, _, arg = spec.partition(":")
  file = resolve_config_path(path)
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"Config file {str(file)!r} defines no get_config() function.")
    config = module.get_config(arg) if arg else module.get_config()
  except ConfigError:
    raise
  except Exception as error:  # pylint: disable=broad-except  # a config file is code: it can fail in any way
    raise ConfigError(f"Config file {str(file)!r} failed to run ({type(error).__name__}: {error}); fix the file "
                      f"(is it truncated or edited by mistake?).") from error
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{str(file)!r}: get_config() returned {type(config).__name__}, not a ConfigDict.")
  return config


def _parse_value(key: str, text: str, current_type: type):
  """Parses `text` into `current_type`, the type the config file gave `key`."""
  if current_type is bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={text}: expected a bool (true/false).")
  if current_type is str:
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--config.{key}={text}: expected {current_type.__name__}, got {text!r} which is not a Python literal.") from None
  if current_type is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current_type in (tuple, list) and isinstance(value, (tuple, list)):
    value = current_type(value)
  if current_type is type(None):
    return value
  if not isinstance(value, current_type) or (current_type is int and isinstance(value, bool)):
    raise ConfigError(
        f"--config.{key}={text}: expected {current_type.__name__} (the type in the config file), got {type(value).__name__}.")
  return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets `config.<key>` from the command-line string `text`, checking key and type."""
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      parent = ".".join(parts[:depth])
      raise ConfigError(f"--config.{key}: config.{parent} is a {type(node).__name__}, not a group of keys.")
    if part not in node:
      where = ".".join(parts[:depth]) or "<top level>"
      known = sorted(node.keys())
      close = difflib.get_close_matches(part, known, n=1)
      hint = f" Did you mean {'.'.join(parts[:depth] + close)!r}?" if close else ""
      raise ConfigError(f"Unknown config key {key!r}: {where} has no field {part!r}.{hint} Known fields: {', '.join(known)}.")
    if depth < len(parts) - 1:
      node = node[part]
  value = _parse_value(key, text, node.get_type(parts[-1]))
  with node.unlocked():
    node[parts[-1]] = value


def parse_config_args(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict | None, list[str]]:
  """Splits `--config` and `--config.*` out of argv; returns (config, the other args).

  Overrides apply in command-line order; the returned config is locked so that code reading a
  misspelled key fails loudly too.
  """
  spec, overrides, rest = None, [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == CONFIG_FLAG or arg.startswith(CONFIG_FLAG + "=") or arg.startswith(CONFIG_FLAG + "."):
      name, eq, value = arg.partition("=")
      if not eq:
        if i + 1 >= len(args):
          raise ConfigError(f"{name} needs a value.")
        value, i = args[i + 1], i + 1
      if name == CONFIG_FLAG:
        spec = value
      else:
        overrides.append((name[len(CONFIG_FLAG) + 1:], value))
    else:
      rest.append(arg)
    i += 1
  if spec is None:
    if overrides:
      raise ConfigError("--config.<key>=<value> overrides were given without --config=PATH.")
    return None, rest
  config = load_config(spec)
  for key, value in overrides:
    apply_override(config, key, value)
  config.lock()
  return config, rest


def flags_parser(argv: Sequence[str]):
  """absl `app.run(..., flags_parser=...)` hook: strips config args, parses the rest as absl flags.

  The parsed config is available as `latent_diffusion.configuration.parsed_config()`.
  """
  from absl import flags

  global _PARSED
  try:
    _PARSED, rest = parse_config_args(argv[1:])
  except ConfigError as e:
    sys.exit(f"Config error: {e}")
  try:
    return flags.FLAGS([argv[0]] + rest)
  except flags.Error as error:   # e.g. a required flag left out: a usage line, not a traceback
    sys.exit(f"Usage error: {error}\nSee {pathlib.Path(argv[0]).name} --help (run from the repository root: "
             f"python -m latent_diffusion.<job> --help).")


_PARSED: ml_collections.ConfigDict | None = None


def parsed_config(required: bool = True) -> ml_collections.ConfigDict | None:
  """The config given on the command line (after `flags_parser` ran)."""
  if required and _PARSED is None:
    sys.exit("Config error: --config=PATH is required (e.g. --config=configs/quickstart.py).")
  return _PARSED


def _tuples(value):
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """The ConfigDict saved with a checkpoint (JSON lists become tuples again)."""
  import json

  try:
    tree = json.loads(text)
  except (ValueError, RecursionError) as error:
    raise ConfigError(f"The config saved with the checkpoint is not valid JSON ({error}).") from None
  if not isinstance(tree, dict):
    raise ConfigError(f"The config saved with the checkpoint is a JSON {type(tree).__name__}, not an object.")
  return ml_collections.ConfigDict(_tuples(tree))
