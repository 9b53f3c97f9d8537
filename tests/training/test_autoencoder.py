"""Stage 1 through its real entry points on one tiny run: a VQ autoencoder with an EMA codebook, dead-code restarts,
LPIPS (random VGG16 trunk) and a PatchGAN from step 4, then a VQ-regularized LDM trained on its latents and
sampled. The GAN switches on exactly at disc_start, codebook usage and perplexity are logged, both players and
their optimizers resume bit for bit, and bad inputs stop the job before it trains."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion import experiment, parallel
from latent_diffusion.models import VQModel
from latent_diffusion.training import autoencoder
from latent_diffusion.training.checkpoint import StageCheckpoints
from latent_diffusion.weights.mapping import WeightImportError
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

STEPS, DISC_START, CODES = 8, 4, 32


def logged(logdir: pathlib.Path) -> dict[str, dict[int, object]]:
  """{tag: {step: value}} of what clu wrote to TensorBoard under logdir: scalars as floats, images as
  their (height, width)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # clu's writer already loaded it
  out: dict[str, dict[int, object]] = {}
  for path in sorted(logdir.rglob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        # An image summary is the string tensor [width, height, encoded image].
        out.setdefault(value.tag, {})[event.step] = float(array) if array.ndim == 0 else (int(array[1]), int(array[0]))
  return out


def vq_gan_config(vgg_path, heads_path):
  config = tiny_config(
      "autoencoder.regularization=vq", f"autoencoder.vq.num_embeddings={CODES}", "autoencoder.vq.codebook_update=ema",
      "autoencoder.vq.dead_code_threshold=0.97", "autoencoder.use_ema=false",
      "autoencoder.loss.disc_weight=0.5", f"autoencoder.loss.disc_start={DISC_START}",
      "autoencoder.loss.perceptual_weight=1.0",
      "autoencoder.discriminator.num_layers=2", "autoencoder.discriminator.ch=8",
      f"autoencoder.lpips.vgg_path={vgg_path}", f"autoencoder.lpips.heads_path={heads_path}",
      f"autoencoder.loop.train_steps={STEPS}", "autoencoder.loop.log_every_steps=1",
      f"autoencoder.loop.checkpoint_every_steps={DISC_START}", f"autoencoder.loop.eval_every_steps={STEPS}",
      "autoencoder.optim.warmup_steps=0", "autoencoder.disc_optim.lr=0.01", "autoencoder.eval_examples=32",
      "autoencoder.grid_images=4", "data.batch_size=8", "ldm.loop.train_steps=10", "ldm.loop.log_every_steps=5",
      "ldm.loop.checkpoint_every_steps=10", "evaluate.samples_per_class=1", "evaluate.grid_columns=1",
      "evaluate.during_training=()", "evaluate.reconstruction.metrics=('psnr', 'ssim', 'lpips')")
  with config.unlocked():  # the evaluators of this test: samples of the VQ-regularized LDM, reconstruction metrics
    config.evaluate.evals = {name: config.evaluate.evals[name] for name in ("sample_grid", "reconstruction")}
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory, random_lpips):
  """(config, workdir, metrics.json) of the pipeline autoencoder -> ldm -> evaluate on the config above."""
  _, vgg_path, heads_path = random_lpips
  config = vq_gan_config(vgg_path, heads_path)
  workdir = tmp_path_factory.mktemp("vq_gan") / "run"
  return config, workdir, experiment.run(config, workdir)


def restore(config, workdir: pathlib.Path, step: int):
  """The whole stage-1 state saved at `step`."""
  _, template = autoencoder.abstract_state(config, parallel.make_mesh(config.mesh))
  checkpoints = StageCheckpoints(workdir / "autoencoder" / "checkpoints")
  try:
    return checkpoints.restore(template, step)[0]
  finally:
    checkpoints.close()


def test_gan_terms_are_exactly_zero_before_disc_start_and_act_after(run):
  config, workdir, _ = run
  scalars = logged(workdir / "autoencoder" / "tensorboard")
  for step in range(1, STEPS + 1):                        # logged step s ran with state.step = s - 1
    gan = [scalars[f"train/{name}"][step] for name in ("g_loss", "d_weight", "disc_loss", "disc_factor")]
    assert (all(v != 0.0 for v in gan) if step - 1 >= DISC_START else all(v == 0.0 for v in gan)), (step, gan)
    assert scalars["train/lpips"][step] > 0.0                # the perceptual term is in every step
  # Until disc_start the discriminator gets exactly zero gradients (its Adam moments are still zero, so its
  # parameters never moved); afterwards it trains.
  before, after = restore(config, workdir, DISC_START), restore(config, workdir, STEPS)
  moments = [leaf for leaf in jax.tree.leaves(before.disc_opt_state) if np.ndim(leaf) > 0]
  assert moments and all(not np.any(leaf) for leaf in moments)
  assert all(np.any(leaf) for leaf in jax.tree.leaves(after.disc_opt_state) if np.ndim(leaf) > 0)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.disc_params),
                                                       jax.tree.leaves(before.disc_params)))
  assert before.ema_params is None and after.codebook_stats.cluster_size.shape == (CODES,)


def test_codebook_usage_perplexity_and_reconstruction_metrics_are_logged(run):
  _, workdir, metrics = run
  scalars = logged(workdir / "autoencoder" / "tensorboard")
  usage, perplexity = scalars["train/codebook_usage"], scalars["train/perplexity"]
  assert sorted(usage) == list(range(1, STEPS + 1))
  assert all(1 / CODES <= u <= 1.0 for u in usage.values()) and all(1.0 <= p <= CODES for p in perplexity.values())
  # Counts start at 1 and decay by 0.99 a step: 0.99**3 > 0.97 > 0.99**4, so exactly the codes unused in the
  # first four batches are restarted, at step 4 (a subset of those unused in the first batch).
  restarted = scalars["train/dead_codes_restarted"]
  assert restarted[1] == restarted[2] == restarted[3] == 0.0 and 0 < restarted[4] <= round(CODES * (1 - usage[1]))
  ae = metrics["autoencoder"]
  assert 0.0 < ae["val_codebook_usage"] <= 1.0 and 1.0 <= ae["val_perplexity"] <= CODES
  assert ae["val_lpips"] > 0 and 0.0 < ae["val_ssim"] < 1.0 and ae["val_psnr_db"] > 5.0
  for name in ("psnr_db", "ssim", "lpips", "codebook_usage", "perplexity"):
    assert scalars[f"val/{name}"][STEPS] == pytest.approx(ae[f"val_{name}"], rel=1e-6)
  assert scalars["val/reconstructions"][STEPS] == (2 * 16, 4 * 16)   # 4 originals above their reconstructions


def test_both_optimizers_and_the_codebook_resume_bit_for_bit(run):
  config, workdir, metrics = run
  resumed = workdir.parent / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "autoencoder" / "checkpoints" / str(STEPS))    # as if killed after step 4's checkpoint
  again = autoencoder.train(config, resumed, parallel.make_mesh(config.mesh))
  assert again["train_loss_last"] == metrics["autoencoder"]["train_loss_last"]
  a, b = restore(config, workdir, STEPS), restore(config, resumed, STEPS)
  for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(leaf_a, leaf_b)   # both players, both optimizers, codebook statistics


def test_vq_regularized_ldm_trains_and_samples(run):
  config, workdir, metrics = run
  assert metrics["ldm"]["train_steps"] == 10 and np.isfinite(metrics["ldm"]["train_loss_last"])
  grid = workdir / metrics["evaluate"]["sample_grid"]                   # one sample per class, decoded through VQ
  assert grid.is_file() and np.asarray(Image.open(grid)).std() > 0
  # The evaluate stage's reconstruction evaluator works on a VQ autoencoder too (SSIM and LPIPS registered).
  assert {"psnr", "ssim", "lpips"} <= metrics["evaluate"].keys() and metrics["evaluate"]["psnr"] > 5.0
  # The LDM diffuses the pre-quantization latents (a point mass per image); the decoder quantizes its samples.
  model, params = autoencoder.load_params(config, workdir, parallel.make_mesh(config.mesh))
  assert isinstance(model, VQModel)
  h = np.random.default_rng(0).normal(size=(2, 4, 4, config.autoencoder.model.embed_dim)).astype(np.float32)
  indices = model.apply({"params": params}, h, method=VQModel.quantize).indices
  # (the straight-through output h + sg(q - h) equals the code q up to float32 rounding: 1.3e-6 seen on the pixels)
  np.testing.assert_allclose(model.apply({"params": params}, h, method=VQModel.decode),
                             model.apply({"params": params}, indices, method=VQModel.decode_indices), atol=1e-5)
  posterior = model.apply({"params": params}, np.zeros((1, 16, 16, 1), np.float32), method="latent_distribution")
  np.testing.assert_array_equal(posterior.sample(jax.random.key(0)), posterior.mean)
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved["autoencoder"]["val_codebook_usage"] == metrics["autoencoder"]["val_codebook_usage"]


def test_bad_inputs_stop_the_job_before_training(tmp_path, random_lpips):
  _, vgg_path, _ = random_lpips
  mesh = parallel.make_mesh(tiny_config().mesh)
  with pytest.raises(FileNotFoundError, match="torchvision VGG16 ImageNet state dict.*lpips.vgg_path"):
    autoencoder.train(tiny_config("autoencoder.loss.perceptual_weight=1.0"), tmp_path / "a", mesh)
  broken = tmp_path / "heads.pth"
  torch.save({f"lin{i}.model.1.weight": torch.zeros(1, 7, 1, 1) for i in range(5)}, broken)  # heads of another trunk
  with pytest.raises(WeightImportError, match=r"(?s)shape mismatches \(5\):\s+lin0.model.1.weight: checkpoint "
                                              r"\(1, 7, 1, 1\)"):
    autoencoder.train(tiny_config(f"autoencoder.lpips.vgg_path={vgg_path}", f"autoencoder.lpips.heads_path={broken}"),
                      tmp_path / "b", mesh)
  with pytest.raises(ValueError, match=r"gives 3-channel images .* but config.autoencoder.model.in_channels=1: set "
                                       r"--config.autoencoder.model.in_channels=3"):
    autoencoder.train(tiny_config("data.name=sample_photos"), tmp_path / "c", mesh)
  assert not any((tmp_path / name / "autoencoder").exists() for name in "abc")
