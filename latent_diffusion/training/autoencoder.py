"""Stage 1: the perceptual autoencoder (KL-regularized), its loss, train step and evaluation.

Loss per image (CompVis convention, so `kl_weight` has the paper's meaning):
  sum over pixels of the reconstruction term  +  kl_weight * KL(q(z|x) || N(0, I)) summed over z.
Reconstruction terms are looked up by name in RECONSTRUCTION_LOSSES; a perceptual (LPIPS) term
registers there too, and a PatchGAN adds a discriminator state next to TrainState.
"""

import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import data, parallel
from latent_diffusion.models import AutoencoderKL
from latent_diffusion.training import loop
from latent_diffusion.training import state as state_lib
from latent_diffusion.training.state import create_train_state, make_optimizer

# name -> fn(x [B,H,W,C], recon [B,H,W,C]) -> per-image loss [B], summed over pixels and channels.
RECONSTRUCTION_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "l1": lambda x, recon: jnp.abs(x - recon).sum(axis=(1, 2, 3)),
    "l2": lambda x, recon: jnp.square(x - recon).sum(axis=(1, 2, 3)),
}


def build_model(config) -> AutoencoderKL:
  return AutoencoderKL(**config.autoencoder.model)


def downsampling_factor(config) -> int:
  return 2 ** (len(config.autoencoder.model.ch_mult) - 1)


def make_train_step(model: AutoencoderKL, loss_config, tx, ema_decay: float, microbatches: int = 1) -> loop.StepFn:
  if loss_config.reconstruction not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"Unknown autoencoder.loss.reconstruction {loss_config.reconstruction!r}; "
                     f"known: {sorted(RECONSTRUCTION_LOSSES)}.")
  reconstruction_loss = RECONSTRUCTION_LOSSES[loss_config.reconstruction]

  def loss_fn(params, batch: dict, rng: jax.Array):
    x = batch["image"]                                  # [B, H, W, C] in [-1, 1]
    sample_rng, dropout_rng = jax.random.split(rng)
    recon, posterior = model.apply({"params": params}, x, sample_posterior=True, deterministic=False,
                                   rngs={"sample": sample_rng, "dropout": dropout_rng})
    rec = reconstruction_loss(x, recon.astype(jnp.float32))   # [B]
    kl = posterior.kl()                                 # [B]
    loss = jnp.mean(rec + loss_config.kl_weight * kl)
    pixels = np.prod(x.shape[1:])
    return loss, {"loss": loss, f"{loss_config.reconstruction}_per_pixel": rec.mean() / pixels, "kl": kl.mean()}

  return state_lib.make_train_step(loss_fn, tx, ema_decay, microbatches)


def psnr_fn(model: AutoencoderKL) -> Callable:
  """jit(params, images [N,H,W,C] in [-1,1]) -> PSNR in dB over [0, 1] pixels, posterior mode."""
  def psnr(params, images):
    posterior = model.apply({"params": params}, images, method=AutoencoderKL.encode)
    recon = model.apply({"params": params}, posterior.mode(), method=AutoencoderKL.decode)
    mse = jnp.mean(jnp.square((jnp.clip(recon, -1, 1) - images) / 2.0))
    return 10.0 * jnp.log10(1.0 / mse)
  return jax.jit(psnr)


def init_state(config, mesh, rng):
  """(model, tx, state, state_shardings) of a fresh stage-1 run."""
  model = build_model(config)
  size = config.data.image_size
  dummy = jnp.zeros((1, size, size, config.autoencoder.model.in_channels), jnp.float32)
  tx = make_optimizer(config.autoencoder.optim, config.autoencoder.loop.train_steps)
  init = lambda r: model.init({"params": r, "sample": r}, dummy)["params"]
  state, shardings = create_train_state(init, tx, rng, mesh, config.mesh)
  return model, tx, state, shardings


def train(config, workdir: pathlib.Path, mesh) -> dict:
  """Trains (or resumes) stage 1 under workdir/autoencoder; returns its summary metrics."""
  rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  model, tx, state, shardings = init_state(config, mesh, rng)
  val = np.stack([example["image"] for example in data.make_dataset(config.data, "val").to_iter_dataset()])
  psnr = psnr_fn(model)
  stage = loop.Stage(
      name="autoencoder", loop_config=config.autoencoder.loop, workdir=workdir / "autoencoder",
      state=state, state_shardings=shardings,
      step_fn=make_train_step(model, config.autoencoder.loss, tx, config.autoencoder.loop.ema_decay,
                              config.autoencoder.optim.microbatches),
      dataset=data.make_dataset(config.data, "train").map(lambda ex: {"image": ex["image"]}),
      batch_size=config.data.batch_size,
      rng=jax.random.fold_in(rng, 2), seed=config.seed, meta={"config": config.to_json_best_effort()},
      eval_fn=lambda s: {"psnr_db": float(psnr(s.ema_params, val))}, mesh=mesh, mesh_config=config.mesh)
  state, _, history = loop.train_stage(stage)
  return {"val_psnr_db": float(psnr(state.ema_params, val)), "train_steps": int(state.step),
          **loop.loss_summary(history)}


def load_params(config, workdir: pathlib.Path, mesh):
  """(model, EMA params) of the trained autoencoder under workdir/autoencoder."""
  model, _, template, _ = init_state(config, mesh, jax.random.key(0))
  state, _ = loop.restore_trained(workdir / "autoencoder", template)
  return model, state.ema_params
