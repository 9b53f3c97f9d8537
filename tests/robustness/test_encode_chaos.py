"""Chaos test of the pre-encoding job: 2 processes (jax.distributed over gloo) encoding 2,000 records,
SIGKILL of a random process at a random point, several times, then a run to completion. Every
record must come out exactly once, bitwise equal to an uninterrupted 2-process run.

The CI version kills once; the long version (5 kills, the issue's acceptance run) is marked `long`
and runs with:  python -m pytest -m long tests/robustness/test_encode_chaos.py
"""

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.data import photo_fixtures
from tests.test_encoding import read_output

pytestmark = pytest.mark.slow
RECORDS, PER_TAR, PER_SHARD = 2000, 250, 50
CORRUPT = ("0000007", "0030011")   # garbage bytes instead of a JPEG: skipped and counted, once


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(tar pattern, diffusers VAE folder): RECORDS small JPEG crops of real photos in 8 tars."""
  import diffusers
  import torch

  root = tmp_path_factory.mktemp("chaos_inputs")
  rng = np.random.default_rng(0)
  rgb = lambda photo: np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo
  sources = {name: rgb(photo) for name, photo in photo_fixtures.photos().items()}
  names = sorted(sources)
  for tar in range(RECORDS // PER_TAR):
    members = []
    for i in range(PER_TAR):
      key = f"{tar:03d}{i:04d}"
      crop = photo_fixtures.random_crop(sources[names[int(rng.integers(len(names)))]], rng, 16, 40)
      encoded = io.BytesIO()
      Image.fromarray(crop).save(encoded, "JPEG", quality=90)
      data = rng.bytes(300) if key in CORRUPT else encoded.getvalue()
      members += [(f"{key}.jpg", data), (f"{key}.txt", f"crop {key}".encode())]
    photo_fixtures.write_tar(root / f"{tar:05d}.tar", members)
  torch.manual_seed(0)
  diffusers.AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          latent_channels=4, sample_size=16).save_pretrained(root / "vae")
  return str(root / f"{{00000..{RECORDS // PER_TAR - 1:05d}}}.tar"), root / "vae"


def _start(inputs, output, env):
  pattern, vae = inputs
  port = socket.socket()
  port.bind(("127.0.0.1", 0))
  coordinator = f"127.0.0.1:{port.getsockname()[1]}"
  port.close()
  env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return [subprocess.Popen(
      [sys.executable, "-m", "latent_diffusion.cli.encode", "--config=configs/tiny.py", f"--input={pattern}",
       f"--output={output}", f"--vae={vae}", "--config.data.name=tar_shards", "--config.data.image_size=16",
       "--config.encode.batch_size=64", f"--config.encode.records_per_shard={PER_SHARD}",
       f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(jobs) -> None:
  for job in jobs:
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-4000:]


def _committed(output) -> int:
  return len(list(output.glob("latents-*.json")))


def _writing_since(output, started: float) -> bool:
  """Whether this round's job has written records (a .partial shard modified after it started)."""
  for path in output.glob("*.partial"):
    try:
      if path.stat().st_mtime > started:
        return True
    except FileNotFoundError:   # committed (renamed) meanwhile
      pass
  return False


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory, cached_compiles_env):
  output = tmp_path_factory.mktemp("chaos_reference")
  _finish(_start(inputs, output, cached_compiles_env))
  return output


def _chaos(inputs, uninterrupted, output, env, kills: int, seed: int) -> list[dict]:
  """Kills the job `kills` times at random points while it encodes (after a random number of shards
  committed in the round, plus a random delay), then runs it to completion; returns what each kill hit."""
  chooser, total, faults = random.Random(seed), RECORDS // PER_SHARD, []
  for _ in range(kills + 3):   # attempts: a job that finishes before its kill point injects nothing
    if len(faults) == kills:
      break
    done = _committed(output)
    # A random point within this round's share of the remaining shards, so that every kill finds work.
    share = max((total - done) // (kills - len(faults) + 1), 1)
    target, extra = done + chooser.randrange(share), chooser.uniform(0.0, 0.05)
    victim = chooser.randrange(2)
    started = time.time()
    jobs = _start(inputs, output, env)
    while (_committed(output) < target or not _writing_since(output, started)) and all(j.poll() is None for j in jobs):
      time.sleep(0.01)
    time.sleep(extra)
    if any(job.poll() is not None for job in jobs):
      _finish(jobs)
      continue
    partial = len(list(output.glob("*.partial")))
    os.kill(jobs[victim].pid, signal.SIGKILL)
    time.sleep(0.2)   # the scheduler then tears the whole job down (the survivor waits in a collective)
    os.kill(jobs[1 - victim].pid, signal.SIGKILL)
    for job in jobs:
      job.wait()
    faults.append({"victim": victim, "shards_committed": _committed(output), "partial_files": partial})
  assert len(faults) == kills, faults
  _finish(_start(inputs, output, env))

  resumed, reference = read_output(output), read_output(uninterrupted)
  assert len(resumed) == len(reference) == RECORDS - len(CORRUPT)   # every record exactly once
  assert resumed.keys() == reference.keys()
  for key, record in reference.items():
    for name in ("latent_mean", "latent_logvar"):
      np.testing.assert_array_equal(resumed[key][name], record[name])   # bitwise
  manifest = json.loads((output / "manifest.json").read_text())
  assert manifest["skipped"] == {"undecodable": list(CORRUPT)}
  assert manifest["records"] == len(reference) and not list(output.glob("*.partial"))
  return faults


def test_encode_survives_a_random_kill(inputs, uninterrupted, tmp_path, cached_compiles_env):
  faults = _chaos(inputs, uninterrupted, tmp_path, cached_compiles_env, kills=1, seed=0)
  print("faults injected:", faults)


@pytest.mark.long
@pytest.mark.parametrize("seed", [1])
def test_encode_survives_five_random_kills(inputs, uninterrupted, tmp_path, cached_compiles_env, seed):
  faults = _chaos(inputs, uninterrupted, tmp_path, cached_compiles_env, kills=5, seed=seed)
  print("faults injected:", faults)
