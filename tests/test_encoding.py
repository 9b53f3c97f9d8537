"""The pre-encoding job (latent_diffusion.cli.encode): shards of real photos with corrupt entries ->
latent shards; killed mid-shard and rerun equals an uninterrupted run; stage 2 trains on them."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from latent_diffusion import parallel
from latent_diffusion.data import images, latent_shards, tar_shards
from latent_diffusion.preemption import PREEMPTED_EXIT_CODE
from latent_diffusion.training import ldm
from latent_diffusion.weights import pretrained
from latent_diffusion.weights import tokenization
from tests.conftest import tiny_config
from tests import text_fixtures
from tests.encode_killer import KILLER
from tests.data import photo_fixtures

import torch  # noqa: E402  (pinned in requirements-test.txt: never skipped)
import diffusers  # noqa: E402

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(shard pattern, expected good keys, expected skips, diffusers VAE folder)."""
  root = tmp_path_factory.mktemp("encode_inputs")
  (root / "shards").mkdir()
  expected, skipped = photo_fixtures.write_shards(root / "shards", num_shards=3, per_shard=8)
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                latent_channels=4, sample_size=IMAGE_SIZE)
  vae.save_pretrained(root / "vae")
  text_fixtures.write_tiny_clip_tokenizer(root / "tokenizer")
  return str(root / "shards" / "{00000..00002}.tar"), expected, skipped, root / "vae"


def _encode_command(inputs, output, *extra):
  pattern, _, _, vae = inputs
  return [sys.executable, "-m", "latent_diffusion.cli.encode", "--config=configs/tiny.py", f"--input={pattern}",
          f"--output={output}", f"--vae={vae}", "--config.data.name=tar_shards",
          f"--config.data.image_size={IMAGE_SIZE}", "--config.encode.batch_size=4",
          "--config.encode.text=tokens", "--config.ldm.conditioning.text.encoder=trained",
          f"--config.ldm.conditioning.text.tokenizer_path={vae.parent / 'tokenizer'}",
          "--config.encode.records_per_shard=5", *extra]


def read_output(directory) -> dict:
  """key -> decoded record over every shard; fails on a duplicate key."""
  records = {}
  for path in latent_shards.shard_paths(directory):
    reader = latent_shards.grain.sources.ArrayRecordDataSource([path])
    for i in range(len(reader)):
      record = latent_shards.decode_record(reader[i])
      assert record["key"] not in records, f"duplicate {record['key']}"
      records[record["key"]] = record
  return records


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory, cached_compiles_env):
  output = tmp_path_factory.mktemp("encoded")
  result = subprocess.run(_encode_command(inputs, output), capture_output=True, text=True, timeout=600,
                          env=cached_compiles_env)
  assert result.returncode == 0, result.stderr[-3000:]
  return output


def test_every_good_record_is_encoded_once_and_skips_are_counted(inputs, uninterrupted):
  _, expected, skipped, _ = inputs
  records = read_output(uninterrupted)
  assert sorted(records) == sorted(expected)
  manifest = json.loads((uninterrupted / "manifest.json").read_text())
  assert manifest["records"] == len(expected)
  assert manifest["skipped"] == {reason: sorted(keys) for reason, keys in skipped.items()}
  assert manifest["last_run_throughput"]["images_per_second"] > 0 and len(manifest["encoder_sha256"]) == 64
  some = records[sorted(records)[0]]
  assert some["latent_mean"].shape == some["latent_logvar"].shape == (IMAGE_SIZE // 2, IMAGE_SIZE // 2, 4)
  assert some["caption"] == expected[some["key"]].caption
  tokenizer = tokenization.load_tokenizer(inputs[3].parent / "tokenizer")
  np.testing.assert_array_equal(some["tokens"], tokenization.tokenize(tokenizer, [some["caption"]])[0])


def test_latents_equal_the_bare_encoder_on_the_same_images(inputs, uninterrupted):
  pattern, _, _, vae_folder = inputs
  vae, params, _ = pretrained.load_diffusers_vae(vae_folder)
  dataset = images.image_dataset(tar_shards.TarShardSource(pattern), image_size=IMAGE_SIZE, text=True)
  examples = [ex for ex in dataset.to_iter_dataset()][:6]
  posterior = vae.apply({"params": params}, np.stack([ex["image"] for ex in examples]), method=type(vae).encode)
  records = read_output(uninterrupted)
  for i, ex in enumerate(examples):
    np.testing.assert_allclose(records[ex["key"]]["latent_mean"], posterior.mean[i], rtol=1e-5, atol=1e-5)




def test_killed_mid_shard_then_rerun_equals_uninterrupted(inputs, uninterrupted, tmp_path, cached_compiles_env):
  command = _encode_command(inputs, tmp_path)
  killed = subprocess.run([sys.executable, "-c", KILLER, *command[3:]], capture_output=True, text=True,
                          timeout=600, env=dict(cached_compiles_env, KILL_AT_WRITE="8", SIGNAL="SIGKILL"))
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert list(tmp_path.glob("*.partial")) and not (tmp_path / "manifest.json").exists()
  finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=cached_compiles_env)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert not list(tmp_path.glob("*.partial"))
  resumed, reference = read_output(tmp_path), read_output(uninterrupted)
  assert resumed.keys() == reference.keys()
  for key, record in reference.items():
    for name in ("latent_mean", "latent_logvar"):
      np.testing.assert_array_equal(resumed[key][name], record[name])
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["skipped"] == json.loads((uninterrupted / "manifest.json").read_text())["skipped"]


def test_sigterm_abandons_the_unfinished_shard_and_the_rerun_completes_it(inputs, uninterrupted, tmp_path,
                                                                          cached_compiles_env):
  """SIGTERM mid-run: the job writes what its last encoder call produced, commits the shards that
  completes, deletes the .partial file of any shard still unfinished and exits 75; the rerun equals
  an uninterrupted run."""
  command = _encode_command(inputs, tmp_path)
  stopped = subprocess.run([sys.executable, "-c", KILLER, *command[3:]], capture_output=True, text=True,
                           timeout=600, env=dict(cached_compiles_env, KILL_AT_WRITE="9", SIGNAL="SIGTERM"))
  assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
  # 22 records in shards of 5, batches of 4 (a shard starts a batch): the 9th valid record (#9, the
  # last of shard 1) is written while the call holding records 10-13 runs; that call is written
  # too, which leaves shard 2 unfinished: abandoned.
  abandoned = re.search(r"encode: abandoned unfinished shard\(s\) \[(.*)\] of this process", stopped.stderr)
  assert abandoned and re.findall(r"latents-\d+-of-\d+", abandoned.group(1)) == ["latents-00002-of-00005"]
  committed = [f"latents-0000{i}-of-00005" for i in (0, 1)]
  assert sorted(p.stem for p in tmp_path.glob("latents-*.json")) == committed
  assert sorted(p.stem for p in tmp_path.glob(f"*{latent_shards.SUFFIX}")) == committed
  assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "manifest.json").exists()
  finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=cached_compiles_env)
  assert finished.returncode == 0, finished.stderr[-3000:]
  resumed, reference = read_output(tmp_path), read_output(uninterrupted)
  assert resumed.keys() == reference.keys()
  for key, record in reference.items():
    for name in ("latent_mean", "latent_logvar"):
      np.testing.assert_array_equal(resumed[key][name], record[name])


def test_stage_two_without_the_encoding_first_stage_is_refused_before_training(uninterrupted, tmp_path):
  """Latents of a diffusers VAE, stage 2 from scratch in a workdir without an autoencoder: sampling would have no
  decoder for them, so stage 2 refuses at start (the journey's stage 2 on our own autoencoder's latents trains:
  tests/test_readme_journey.py)."""
  config = tiny_config(f"ldm.latents_path={uninterrupted}", "data.image_size=32", "ldm.conditioning.kinds=()")
  mesh = parallel.make_mesh(config.mesh)
  assert ldm.describe(config, None, mesh).latent_shape == (IMAGE_SIZE // 2, IMAGE_SIZE // 2, 4)  # the encoder's (f=2)
  with pytest.raises(ValueError, match=r"Stage 2 needs a trained autoencoder: there is no checkpoint under "
                                       rf"{tmp_path / 'autoencoder'}.*--config.ldm.autoencoder_workdir"):
    ldm.train(config, tmp_path, mesh)
  assert not (tmp_path / "ldm").exists()


def test_two_processes_write_the_same_records_as_one(inputs, uninterrupted, tmp_path):
  """2 processes x 2 CPU devices (gloo) split the shards and the global batches. The same records,
  keys and captions; latents equal to float32 rounding (1 image per device instead of 4 changes
  how XLA's CPU convolutions block their sums: differences ~2e-6)."""
  port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                         "print(s.getsockname()[1])"], capture_output=True, text=True, check=True).stdout.strip()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  workers = [subprocess.Popen(_encode_command(inputs, tmp_path, f"--coordinator_address=127.0.0.1:{port}",
                                              "--num_processes=2", f"--process_id={i}"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for worker in workers:
    _, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-3000:]
  resumed, reference = read_output(tmp_path), read_output(uninterrupted)
  assert resumed.keys() == reference.keys()
  for key, record in reference.items():
    assert resumed[key]["caption"] == record["caption"]
    np.testing.assert_allclose(resumed[key]["latent_mean"], record["latent_mean"], rtol=1e-5, atol=1e-5)
