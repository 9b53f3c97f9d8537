"""Stage 1 trained through its real entry points on tiny configs: the GAN switches on at disc_start, both players and
the learned logvar are checkpointed and resume bit for bit, VQ statistics are logged, a VQ-regularized LDM trains
and samples end to end, and bad inputs stop the job before it trains."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import torch

from latent_diffusion import parallel, pipeline
from latent_diffusion.models import VQModel
from latent_diffusion.training import autoencoder
from latent_diffusion.training.checkpoint import StageCheckpoints
from latent_diffusion.weights.mapping import WeightImportError
from tests.conftest import tiny_config
from tests.lpips_fixtures import HEADS, write_random_vgg

pytestmark = pytest.mark.slow

GAN_STEPS, DISC_START = 6, 3


def logged_scalars(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the TensorBoard scalars clu wrote under logdir; images as their (height, width)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # clu's writer already loaded it
  out: dict[str, dict[int, float]] = {}
  for path in sorted(logdir.rglob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        # An image summary is the string tensor [width, height, encoded image].
        out.setdefault(value.tag, {})[event.step] = float(array) if array.ndim == 0 else (int(array[1]), int(array[0]))
  return out


def gan_config():
  """KL + PatchGAN from step 3 + learned logvar (LPIPS in the step: tests/training/test_stage1_mesh.py)."""
  return tiny_config(
      "autoencoder.loss.disc_weight=0.5", f"autoencoder.loss.disc_start={DISC_START}",
      "autoencoder.loss.learn_logvar=true", "autoencoder.discriminator.num_layers=2", "autoencoder.discriminator.ch=8",
      f"autoencoder.loop.train_steps={GAN_STEPS}", "autoencoder.loop.log_every_steps=1",
      f"autoencoder.loop.checkpoint_every_steps={DISC_START}", f"autoencoder.loop.eval_every_steps={GAN_STEPS}",
      "data.batch_size=8", "autoencoder.eval_examples=16", "autoencoder.grid_images=4", "autoencoder.optim.warmup_steps=0",
      "autoencoder.disc_optim.lr=0.01")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
  """(config, workdir, summary, the initial state) of a 6-step run with disc_start=3 (checkpoints at 3, 6)."""
  config = gan_config()
  workdir = tmp_path_factory.mktemp("gan") / "run"
  mesh = parallel.make_mesh(config.mesh)
  summary = autoencoder.train(config, workdir, mesh)
  # The state train() starts from (its key is fold_in(key(seed), 1)); also the template to restore into.
  _, initial, _ = autoencoder.init_state(config, mesh, jax.random.fold_in(jax.random.key(config.seed), 1))
  return config, workdir, summary, initial


def restore_state(workdir: pathlib.Path, step: int, template):
  checkpoints = StageCheckpoints(workdir / "autoencoder" / "checkpoints")
  try:
    return checkpoints.restore(template, step)[0]
  finally:
    checkpoints.close()


def test_gan_terms_are_exactly_zero_before_disc_start_and_act_after(gan_run):
  _, workdir, summary, initial = gan_run
  scalars = logged_scalars(workdir / "autoencoder" / "tensorboard")
  for step in range(1, GAN_STEPS + 1):                      # logged step s ran with state.step = s - 1
    on = step - 1 >= DISC_START
    gan = [scalars[f"train/{name}"][step] for name in ("g_loss", "d_weight", "disc_loss", "disc_factor")]
    assert (all(v != 0.0 for v in gan) if on else all(v == 0.0 for v in gan)), (step, gan)
  assert scalars["val/reconstructions"][GAN_STEPS] == (2 * 16, 4 * 16)   # 4 originals above their reconstructions
  assert {"val_psnr_db", "val_ssim"} <= summary.keys() and 0.0 < summary["val_ssim"] < 1.0
  # The discriminator is untouched until disc_start (zero gradients, zero Adam moments), then trained;
  # the learned logvar moves from its initial 0.
  start = restore_state(workdir, DISC_START, initial)
  end = restore_state(workdir, GAN_STEPS, initial)
  for a, b in zip(jax.tree.leaves(start.disc_params), jax.tree.leaves(initial.disc_params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(end.disc_params), jax.tree.leaves(start.disc_params)))
  assert float(start.logvar) != 0.0 and float(end.logvar) != float(start.logvar)


def test_both_optimizers_resume_bit_for_bit(gan_run):
  config, workdir, summary, initial = gan_run
  resumed = workdir.parent / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "autoencoder" / "checkpoints" / str(GAN_STEPS))   # as if killed after step 3's checkpoint
  again = autoencoder.train(config, resumed, parallel.make_mesh(config.mesh))
  assert again["train_loss_last"] == summary["train_loss_last"] and again["val_psnr_db"] == summary["val_psnr_db"]
  a, b = restore_state(workdir, GAN_STEPS, initial), restore_state(resumed, GAN_STEPS, initial)
  for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(leaf_a, leaf_b)    # every part: both players, both optimizers, logvar, EMA


def test_bad_inputs_stop_the_job_before_training(tmp_path):
  _, vgg_path = write_random_vgg(tmp_path)
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


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
  """A tiny VQ-regularized LDM: VQ autoencoder (EMA codebook, restarts, no EMA weights) -> LDM -> samples."""
  workdir = tmp_path_factory.mktemp("vq_ldm")
  config = tiny_config("autoencoder.regularization=vq", "autoencoder.vq.num_embeddings=32",
                       "autoencoder.vq.codebook_update=ema", "autoencoder.vq.dead_code_threshold=0.5",
                       "autoencoder.use_ema=false", "autoencoder.loop.train_steps=30",
                       "autoencoder.loop.log_every_steps=5", "autoencoder.loop.checkpoint_every_steps=30",
                       "autoencoder.loop.eval_every_steps=30", "ldm.loop.train_steps=20", "ldm.loop.log_every_steps=5",
                       "ldm.loop.checkpoint_every_steps=20", "evaluate.samples_per_class=1", "evaluate.grid_columns=1")
  metrics = pipeline.run(config, workdir)
  return config, workdir, metrics


def test_vq_training_logs_codebook_usage_and_perplexity(vq_run):
  _, workdir, metrics = vq_run
  scalars = logged_scalars(workdir / "autoencoder" / "tensorboard")
  usage, perplexity = scalars["train/codebook_usage"], scalars["train/perplexity"]
  assert sorted(usage) == [5, 10, 15, 20, 25, 30]
  assert all(1 / 32 <= u <= 1.0 for u in usage.values()) and all(1.0 <= p <= 32.0 for p in perplexity.values())
  # Codes never assigned since the start fall below the threshold within ~70 steps at decay 0.99: none yet.
  assert scalars["train/dead_codes_restarted"][5] == 0.0
  ae = metrics["autoencoder"]
  assert 0.0 < ae["val_codebook_usage"] <= 1.0 and 1.0 <= ae["val_perplexity"] <= 32.0
  assert ae["train_loss_last"] < ae["train_loss_first"]


def test_vq_regularized_ldm_trains_and_samples(vq_run):
  config, workdir, metrics = vq_run
  assert metrics["ldm"]["train_steps"] == 20 and np.isfinite(metrics["ldm"]["train_loss_last"])
  assert metrics["evaluate"]["generated_samples"] == 10 and (workdir / "samples.png").is_file()
  # The LDM diffuses the pre-quantization latents (a point mass per image) and the decoder quantizes its samples.
  model, params = autoencoder.load_params(config, workdir, parallel.make_mesh(config.mesh))
  assert isinstance(model, VQModel)
  h = np.random.default_rng(0).normal(size=(2, 4, 4, config.autoencoder.model.embed_dim)).astype(np.float32)
  quantized = model.apply({"params": params}, h, method=VQModel.quantize)
  np.testing.assert_allclose(model.apply({"params": params}, h, method="decode"),
                             model.apply({"params": params}, quantized.indices, method=VQModel.decode_indices),
                             rtol=1e-6, atol=1e-6)
  x = np.zeros((1, 16, 16, 1), np.float32)
  posterior = model.apply({"params": params}, x, method="latent_distribution")
  np.testing.assert_array_equal(posterior.sample(jax.random.key(0)), posterior.mean)
