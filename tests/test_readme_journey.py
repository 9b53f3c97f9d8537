"""The README's data-at-scale journey, executed as a user types it: tars of real photos -> stage 1 -> pre-encode
(SIGKILLed once, then rerun) -> stage 2 on the latents -> samples, through the command-line tools only.

The commands are read from README.md (the bash block after '<!-- journey: photo_shards'), so a README command
that stops working fails here. They run in a folder of their own (the package on PYTHONPATH, which finds
`configs/<name>.py` among its packaged configs) with `configs/photo_shards.py:tiny` for `configs/photo_shards.py`. The other tests check
what each step of the journey used to get wrong (issue 18): each would fail on the code before the fix.
"""

import json
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest

from latent_diffusion import configuration, encoding, parallel
from latent_diffusion.data import latent_shards, tar_shards
from latent_diffusion.models import AutoencoderKL
from latent_diffusion.training import ldm
from tests.data import photo_fixtures
from tests.encode_killer import KILLER

REPO = pathlib.Path(__file__).resolve().parents[1]
MARK = "<!-- journey: photo_shards"
CONFIG = "--config=configs/photo_shards.py"
# The default console of a tiny stage-1 run (progress lines, stage lines, skip warnings of the corrupt samples).
MAX_CONSOLE_LINES = 25


def readme_commands() -> list[list[str]]:
  """The journey's commands from README.md, one argv each (continuation lines joined, quotes as bash reads them)."""
  text = (REPO / "README.md").read_text()
  block = text[text.index(MARK):]
  block = block[block.index("```bash\n") + len("```bash\n"):]
  block = block[:block.index("```")]
  return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _argv(command: list[str]) -> list[str]:
  """A README command as run here: this interpreter, the tiny variant of the journey's config."""
  assert command[:2] == ["python", "-m"], command
  return [sys.executable, *command[1:]]


def _run(argv: list[str], root: pathlib.Path, env: dict, *, tiny: bool = True) -> subprocess.CompletedProcess:
  argv = [f"{CONFIG}:tiny" if tiny and a == CONFIG else a for a in argv]
  return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def _records(directory: pathlib.Path) -> list[str]:
  """Keys of every record of the latents folder (a duplicate shows up twice)."""
  dataset = latent_shards.latent_dataset(directory)
  return [dataset[i]["key"] for i in range(len(dataset))]


def _tensorboard_images(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """{tag: the last image [H, W, C] uint8} of the TensorBoard event files under `directory`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # clu's writer needs it anyway

  images = {}
  for path in directory.rglob("events.out.tfevents*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          images[value.tag] = tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()
  return images


@pytest.fixture(scope="module")
def journey(tmp_path_factory, cached_compiles_env):
  """Runs the README's commands in order; returns (root, env, expected keys, {step: CompletedProcess})."""
  root = tmp_path_factory.mktemp("journey")
  (root / "shards").mkdir()
  expected, _ = photo_fixtures.write_shards(root / "shards", num_shards=3, per_shard=8)  # 00002.tar is truncated
  (root / "val").mkdir()
  photo_fixtures.write_shards(root / "val", num_shards=1, per_shard=8, seed=1)
  (root / "val" / "00000.tar").rename(root / "shards" / "00003.tar")
  env = dict(cached_compiles_env, PYTHONPATH=str(REPO))
  stage1, encode_cmd, stage2, sample = (_argv(c) for c in readme_commands())
  runs = {"stage1": _run(stage1, root, env)}
  assert runs["stage1"].returncode == 0, runs["stage1"].stderr[-3000:]
  # The encode job SIGKILLed mid-shard; stage 2 must refuse the unfinished folder; the rerun completes it.
  killed = subprocess.run([sys.executable, "-c", KILLER, *[f"{CONFIG}:tiny" if a == CONFIG else a
                                                           for a in encode_cmd[3:]]],
                          cwd=root, env=dict(env, KILL_AT_WRITE="10", SIGNAL="SIGKILL"), capture_output=True,
                          text=True, timeout=600)
  assert killed.returncode == -9, killed.stderr[-3000:]
  with pytest.raises(latent_shards.LatentsNotReadyError) as unfinished:   # what stage 2 checks first
    latent_shards.read_manifest(root / "latents")
  runs["unfinished"] = str(unfinished.value)
  runs["encode"] = _run(encode_cmd, root, env)
  assert runs["encode"].returncode == 0, runs["encode"].stderr[-3000:]
  runs["stage2"] = _run(stage2, root, env)
  assert runs["stage2"].returncode == 0, runs["stage2"].stderr[-3000:]
  runs["sample"] = _run(sample, root, env)
  return root, env, expected, runs


def test_the_readme_journey_runs_as_written(journey):
  root, _, expected, runs = journey
  assert runs["sample"].returncode == 0, runs["sample"].stderr[-3000:]
  keys = _records(root / "latents")
  assert sorted(keys) == sorted(expected)          # every good photo exactly once after the SIGKILL and rerun
  samples = sorted(p.name for p in (root / "runs" / "photos_ldm" / "samples").glob("*.png"))
  assert len(samples) == 17 and "grid.png" in samples   # --num_images=16, plus the grid
  metrics = json.loads((root / "runs" / "photos_ldm" / "metrics.json").read_text())["ldm"]
  assert metrics["train_steps"] == 6 and np.isfinite(metrics["train_loss_last"])
  images = _tensorboard_images(root / "runs" / "photos_ldm" / "ldm" / "tensorboard")
  assert images.keys() == {"val/sample_grid"} and images["val/sample_grid"].ndim == 3   # the grid of samples


def test_stage_two_refuses_an_unfinished_encode(journey):
  """Defect 5: a killed, not-yet-rerun encode output was read as part of the data without a word (stage 2 reads
  the manifest before anything else: test_stage_two_checks_its_first_stage_and_data_before_training)."""
  assert re.fullmatch(r"The encode job writing \S+/latents has not finished \(\d of 3 shards complete, no manifest.json\): "
                      r"rerun the same latent_diffusion.cli.encode command \(it resumes and redoes only the missing "
                      r"shards\), then start stage 2.", journey[3]["unfinished"]), journey[3]["unfinished"]


def test_an_encode_that_skips_everything_fails(journey, tmp_path):
  """Defect 5: min_size=100 skipped every photo, the job exited 0 with 0 records, stage 2 died in numpy."""
  root = journey[0]
  config, _ = configuration.parse_config_args([f"--config={REPO / 'configs' / 'photo_shards.py'}:tiny",
                                               "--config.encode.min_size=1000"])
  mesh = parallel.make_mesh(config.mesh)
  ae = AutoencoderKL(in_channels=3, ch=4, ch_mult=(1, 2), num_res_blocks=1, groups=2)
  params = ae.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))["params"]
  source = tar_shards.TarShardSource(str(root / "shards" / "{00000..00002}.tar"))
  with pytest.raises(encoding.EmptyOutputError, match=r"No record was encoded: all 24 samples of the input were "
                                                      r"skipped .*config.encode.min_size=1000"):
    encoding.encode_to_shards(source, tmp_path, ae, params, image_size=16, encode_config=config.encode, mesh=mesh,
                              mesh_config=config.mesh, encoder_name="random", skipped_at_index=source.skipped)
  with pytest.raises(latent_shards.LatentsNotReadyError, match="holds no latent record"):
    latent_shards.read_manifest(tmp_path)


def test_the_manifest_describes_the_job(journey):
  """Defect 6: image size, latent shape, input, config; samples seen (not indexed records); truncated shards."""
  manifest = json.loads((journey[0] / "latents" / "manifest.json").read_text())
  assert manifest["image_size"] == 16 and manifest["latent_shape"] == [4, 4, 4]
  assert manifest["input"] == "shards/{00000..00002}.tar" and manifest["run_config"]["data"]["image_size"] == 16
  # 3 shards x 8 photos + a garbage JPEG, an image-less sample, a half JPEG; the cut loses the 3 samples after it.
  assert manifest["source_samples"] == 24 and manifest["records"] == 20
  assert manifest["skipped_counts"] == {"no_image": 1, "truncated_tar": 1, "undecodable": 2}
  assert [pathlib.Path(p).name for p in manifest["truncated_shards"]] == ["00002.tar"]
  assert manifest["autoencoder_workdir"] == str(journey[0] / "runs" / "photos")


def test_default_console_is_short_and_ends_with_a_summary(journey):
  """Issue 15 / defect 7: ~400 lines of library logs (lines up to 1,345 characters), 'ETA: 0m', no summary."""
  run = journey[3]["stage1"]
  lines = run.stderr.splitlines()
  assert len(lines) <= MAX_CONSOLE_LINES, run.stderr
  assert max(len(line) for line in lines) <= 300
  progress = [line for line in lines if line.startswith("autoencoder  step ")]
  assert progress[0].startswith("autoencoder  step 1/6 (16%)  loss ")
  assert re.fullmatch(r"autoencoder  step 6/6 \(100%\)  [\d.]+ steps/s  ETA 0 s  loss [\d.e+-]+", progress[-1])
  assert "autoencoder: evaluating at step 6" in lines
  assert run.stdout.startswith("Run runs/photos:\n  autoencoder: val_psnr_db ")


def test_a_finished_run_reruns_fast_and_keeps_its_metrics(journey):
  """Defect 8: a rerun took ~38 s to skip its stages and overwrote metrics.json (losses and wall times lost)."""
  root, env, _, runs = journey
  metrics_path = root / "runs" / "photos" / "metrics.json"
  before = json.loads(metrics_path.read_text())
  assert before["autoencoder"]["train_loss_first"] != before["autoencoder"]["train_loss_last"]
  rerun = _run(_argv(readme_commands()[0]), root, env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "autoencoder: already trained (6 steps); skipped, its figures in metrics.json kept." in rerun.stderr
  assert json.loads(metrics_path.read_text()) == before


def test_stage_two_checks_its_first_stage_and_data_before_training(journey, tmp_path):
  """Defects 3 and 4: another workdir trained then failed to sample; a mismatched config trained silently on the
  wrong latent size; records without labels trained a class-conditional model on its null class."""
  root = journey[0]
  config_file = f"{REPO / 'configs' / 'photo_shards.py'}:tiny"

  def config(*overrides):
    parsed, _ = configuration.parse_config_args([f"--config={config_file}", f"--config.ldm.latents_path={root}/latents",
                                                 *[f"--config.{o}" for o in overrides]])
    return parsed

  mesh = parallel.make_mesh(config().mesh)
  with pytest.raises(ValueError, match=rf"no checkpoint under {tmp_path / 'autoencoder'}.*--config.ldm.autoencoder_workdir"):
    ldm.train(config(), tmp_path, mesh)
  with pytest.raises(ValueError, match=r"give the options it was trained with: --config.autoencoder.model.in_channels=3 "
                                       r"\(this config: 1\)"):
    ldm.train(config("autoencoder.model.in_channels=1"), root / "runs" / "photos", mesh)
  with pytest.raises(ValueError, match=r"holds latents of shape \(4, 4, 4\) \(images of 16 pixels\) but this config "
                                       r"makes \(8, 8, 4\).*--config.data.image_size=16"):
    ldm.train(config("data.image_size=32", f"ldm.autoencoder_workdir={root}/runs/photos"), tmp_path, mesh)
  with pytest.raises(ValueError, match=r"label -1 is not a class of this model.*kinds=\(\) for unconditional"):
    ldm.train(config("ldm.conditioning.kinds=('class',)", f"ldm.autoencoder_workdir={root}/runs/photos"), tmp_path,
              mesh)
  assert not (tmp_path / "ldm").exists()


def test_command_line_misuse_gets_a_usage_message(journey):
  """Defects 3 and 4: no --workdir gave a 20-line traceback; --label was accepted by an unconditional model."""
  root, env, _, _ = journey
  stage2 = [a for a in _argv(readme_commands()[2]) if not a.startswith("--workdir")]
  missing = _run(stage2, root, env)
  assert missing.returncode == 1 and "Traceback" not in missing.stderr
  assert "Usage error: flag --workdir=None: Flag --workdir must have a value other than None." in missing.stderr
  labelled = _run(_argv(readme_commands()[3]) + ["--label=3"], root, env)
  assert labelled.returncode != 0 and "--label given, but this model is conditioned on unconditional" in labelled.stderr


def test_the_encoder_must_take_rgb_photos():
  """Defect 1: the README's --autoencoder=runs/quickstart (1 channel) died ~24 s in with a Flax ScopeParamShapeError."""
  digits = AutoencoderKL(in_channels=1, ch=8, ch_mult=(1, 2, 2), groups=4)
  with pytest.raises(ValueError, match=r"takes 1-channel images, but the photos of --input are decoded as "
                                                  r"3-channel RGB"):
    encoding.check_encoder(digits, "runs/quickstart/autoencoder", 16)
  with pytest.raises(ValueError, match=r"image_size=18 is not a multiple of the encoder's downsampling "
                                                  r"factor f=4"):
    encoding.check_encoder(digits.clone(in_channels=3), "runs/photos/autoencoder", 18)
