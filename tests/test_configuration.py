"""Config loading and --config.a.b=value overrides: types, unknown keys, clear errors."""

import pathlib
import subprocess
import sys

import pytest

from latent_diffusion import configuration
from latent_diffusion.configuration import ConfigError, parse_config_args
from latent_diffusion.models.attention import ATTENTION_IMPLS
from latent_diffusion.models.unet import REMAT_POLICIES

QUICKSTART = "configs/quickstart.py"
CONFIG_FILES = sorted(p for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("file", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_file_loads_with_known_values(file):
  config = configuration.load_config(str(file))
  assert config.ldm.model.attention_impl in ATTENTION_IMPLS
  assert config.ldm.model.remat_policy in REMAT_POLICIES
  assert len(config.mesh.shape) == 3 and list(config.mesh.shape).count(-1) <= 1


def test_overrides_are_typed_and_applied_in_order():
  config, rest = parse_config_args([
      f"--config={QUICKSTART}", "--config.ldm.optim.lr=0.002", "--config.ldm.loop.train_steps", "12",
      "--config.autoencoder.model.ch_mult=(1, 2, 4)", "--config.ldm.scale_by_std=false",
      "--config.sample.sampler=ddpm", "--config.data.image_width=128", "--workdir=/tmp/w",
      "--config.ldm.optim.lr=3"])
  assert rest == ["--workdir=/tmp/w"]
  assert config.ldm.optim.lr == 3.0 and isinstance(config.ldm.optim.lr, float)  # int literal -> float field
  assert config.ldm.loop.train_steps == 12
  assert config.autoencoder.model.ch_mult == (1, 2, 4)
  assert config.ldm.scale_by_std is False
  assert config.sample.sampler == "ddpm"
  assert config.data.image_width == 128  # placeholder(int) takes an int


def test_unknown_key_is_named_with_a_suggestion():
  with pytest.raises(ConfigError, match=r"Unknown config key 'ldm.optim.lrr'.*ldm.optim has no field 'lrr'.*'ldm.optim.lr'"):
    parse_config_args([f"--config={QUICKSTART}", "--config.ldm.optim.lrr=0.1"])
  with pytest.raises(ConfigError, match=r"Unknown config key 'nonsense'.*<top level>"):
    parse_config_args([f"--config={QUICKSTART}", "--config.nonsense=1"])


@pytest.mark.parametrize("arg, expected", [
    ("--config.ldm.loop.train_steps=1.5", r"ldm.loop.train_steps=1.5: expected int.*got float"),
    ("--config.ldm.loop.train_steps=abc", r"ldm.loop.train_steps=abc: expected int"),
    ("--config.ldm.scale_by_std=maybe", r"ldm.scale_by_std=maybe: expected a bool"),
    ("--config.data.image_width=wide", r"data.image_width=wide: expected int"),
    ("--config.autoencoder.model.ch_mult=3", r"ch_mult=3: expected tuple"),
    ("--config.ldm.optim.lr.x=1", r"config.ldm.optim.lr is a float, not a group"),
])
def test_wrong_type_is_named(arg, expected):
  with pytest.raises(ConfigError, match=expected):
    parse_config_args([f"--config={QUICKSTART}", arg])


def test_missing_file_and_orphan_overrides():
  with pytest.raises(ConfigError, match="no such config file 'configs/nope.py'"):
    parse_config_args(["--config=configs/nope.py"])
  with pytest.raises(ConfigError, match="without --config"):
    parse_config_args(["--config.seed=1"])


def test_config_is_locked_against_typos_in_code():
  config, _ = parse_config_args([f"--config={QUICKSTART}"])
  with pytest.raises(AttributeError):
    _ = config.ldm.optim.learning_rate
  with pytest.raises(AttributeError):
    config.ldm.new_field = 1


def test_checkpointed_config_round_trips_through_json():
  config, _ = parse_config_args([f"--config={QUICKSTART}"])
  restored = configuration.config_from_json(config.to_json_best_effort())
  assert restored.autoencoder.model.ch_mult == config.autoencoder.model.ch_mult
  assert restored.mesh.rules == config.mesh.rules
  assert restored.to_dict() == config.to_dict()


def test_cli_rejects_a_bad_key_before_doing_any_work(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "latent_diffusion.cli.train", f"--config={QUICKSTART}",
       "--config.autoencoder.loop.train_stepz=5", f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "Unknown config key 'autoencoder.loop.train_stepz'" in result.stderr
  assert list(tmp_path.iterdir()) == []  # nothing was written
