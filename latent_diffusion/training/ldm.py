"""Stage 2: the latent diffusion UNet trained on latents of the frozen stage-1 autoencoder.

The training set is first encoded once (posterior mean and log-variance per image); each step
samples z ~ q(z|x), scales it, noises it at a random t and regresses the UNet on the epsilon or
v target. Class labels are dropped to the null label with `cond_drop_prob` so that the same
network serves classifier-free guidance.
"""

import logging
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import data
from latent_diffusion.data import latent_shards
from latent_diffusion.diffusion import NoiseSchedule, q_sample, training_target
from latent_diffusion.models import AutoencoderKL, DiagonalGaussian, UNet
from latent_diffusion.training import autoencoder, loop
from latent_diffusion.training import state as state_lib
from latent_diffusion.training.state import create_train_state, make_optimizer


def build_model(config) -> UNet:
  return UNet(out_channels=config.autoencoder.model.embed_dim, **config.ldm.model)


def build_schedule(config) -> NoiseSchedule:
  d = config.ldm.diffusion
  return NoiseSchedule.create(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end)


def null_label(config) -> int:
  """The label index reserved for 'no condition' (the last class embedding)."""
  return config.ldm.model.num_classes - 1


def latent_shape(config) -> tuple[int, int, int]:
  side = config.data.image_size // autoencoder.downsampling_factor(config)
  return side, side, config.autoencoder.model.embed_dim


def conditioning(config, batch: dict, rng: jax.Array | None = None) -> dict:
  """UNet keyword inputs for `batch`; with `rng`, labels are dropped to null w.p. cond_drop_prob."""
  if config.ldm.model.num_classes is None:
    return {}
  labels = batch["label"]
  if rng is not None:
    drop = jax.random.bernoulli(rng, config.ldm.cond_drop_prob, labels.shape)
    labels = jnp.where(drop, null_label(config), labels)
  return {"y": labels}


def make_train_step(config, model: UNet, schedule: NoiseSchedule, tx, scale_factor: float) -> loop.StepFn:
  prediction_type = config.ldm.diffusion.prediction_type

  def loss_fn(params, batch: dict, rng: jax.Array):
    z_rng, t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 5)
    posterior = DiagonalGaussian(mean=batch["latent_mean"], logvar=batch["latent_logvar"])
    z0 = posterior.sample(z_rng) * scale_factor                       # [B, h, w, c]
    t = jax.random.randint(t_rng, z0.shape[:1], 0, schedule.num_timesteps)
    noise = jax.random.normal(noise_rng, z0.shape, z0.dtype)
    x_t = q_sample(schedule, z0, t, noise)
    target = training_target(schedule, z0, noise, t, prediction_type)
    cond = conditioning(config, batch, drop_rng)
    out = model.apply({"params": params}, x_t, t, **cond, deterministic=False, rngs={"dropout": dropout_rng})
    loss = jnp.mean(jnp.square(out.astype(jnp.float32) - target))
    return loss, {"loss": loss}

  return state_lib.make_train_step(loss_fn, tx, config.ldm.loop.ema_decay, config.ldm.optim.microbatches)


def encode_split(config, ae: AutoencoderKL, ae_params, split: str, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Posterior mean / logvar [N, h, w, c] of every image of a split, plus its other fields.

  One compiled encoder call per batch; the last batch is padded so that it compiles once.
  """
  encode = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=AutoencoderKL.encode))
  columns: dict[str, list] = {}
  for batch in data.make_dataset(config.data, split).to_iter_dataset().batch(batch_size):
    n = len(batch["image"])
    images = np.pad(batch.pop("image"), [(0, batch_size - n)] + [(0, 0)] * 3)
    posterior = jax.device_get(encode(ae_params, images))
    for name, value in {"latent_mean": posterior.mean[:n], "latent_logvar": posterior.logvar[:n], **batch}.items():
      columns.setdefault(name, []).append(np.asarray(value))
  return {name: np.concatenate(parts) for name, parts in columns.items()}


def training_latents(config, workdir: pathlib.Path, mesh) -> grain.MapDataset:
  """Examples {'latent_mean', 'latent_logvar' [h, w, c], 'label'?}: the shards of
  latent_diffusion.encode under config.ldm.latents_path, or config.data encoded here in memory."""
  fields = ("latent_mean", "latent_logvar") + (("label",) if config.ldm.model.num_classes is not None else ())
  if config.ldm.latents_path:
    return latent_shards.latent_dataset(config.ldm.latents_path).map(lambda ex: {k: ex[k] for k in fields})
  ae, ae_params = autoencoder.load_params(config, workdir, mesh)
  latents = encode_split(config, ae, ae_params, "train")
  return data.from_arrays({k: latents[k] for k in fields})


def std_scale_factor(latents: grain.MapDataset, rng: jax.Array, batch_size: int) -> float:
  """LDM's scale_by_std: 1 / std of posterior samples of the first training batch."""
  first = [latents[i] for i in range(min(batch_size, len(latents)))]
  posterior = DiagonalGaussian(mean=np.stack([ex["latent_mean"] for ex in first]),
                               logvar=np.stack([ex["latent_logvar"] for ex in first]))
  return float(1.0 / jnp.std(posterior.sample(rng)))


def init_state(config, mesh, rng):
  """(model, tx, state, state_shardings) of a fresh stage-2 run."""
  model = build_model(config)
  h, w, c = latent_shape(config)
  dummy = jnp.zeros((1, h, w, c), jnp.float32)
  kwargs = {"y": jnp.zeros((1,), jnp.int32)} if config.ldm.model.num_classes is not None else {}
  tx = make_optimizer(config.ldm.optim, config.ldm.loop.train_steps)
  init = lambda r: model.init(r, dummy, jnp.zeros((1,), jnp.int32), **kwargs)["params"]
  state, shardings = create_train_state(init, tx, rng, mesh, config.mesh)
  return model, tx, state, shardings


def train(config, workdir: pathlib.Path, mesh) -> dict:
  """Trains (or resumes) stage 2 under workdir/ldm on latents of the trained autoencoder."""
  if config.ldm.model.num_classes is not None and config.ldm.model.num_classes != config.data.num_classes + 1:
    raise ValueError(f"config.ldm.model.num_classes={config.ldm.model.num_classes} must be "
                     f"config.data.num_classes + 1 = {config.data.num_classes + 1} (one null label for CFG).")
  rng = jax.random.fold_in(jax.random.key(config.seed), 2)
  latents = training_latents(config, workdir, mesh)
  resumed = loop.latest_meta(workdir / "ldm")
  if resumed is not None:
    scale_factor = resumed["scale_factor"]  # keep the constant the run started with
  elif config.ldm.scale_by_std:
    scale_factor = std_scale_factor(latents, jax.random.fold_in(rng, 1), config.data.batch_size)
  else:
    scale_factor = config.ldm.scale_factor
  logging.info("ldm: latent scale factor %.5f (scale_by_std=%s).", scale_factor, config.ldm.scale_by_std)
  model, tx, state, shardings = init_state(config, mesh, jax.random.fold_in(rng, 2))
  from latent_diffusion.evaluation import periodic  # pylint: disable=import-outside-toplevel  (it imports this module)
  eval_fn, eval_history = periodic.training_eval_fn(config, workdir, mesh, model, scale_factor)
  stage = loop.Stage(
      name="ldm", loop_config=config.ldm.loop, workdir=workdir / "ldm", state=state, state_shardings=shardings,
      step_fn=make_train_step(config, model, build_schedule(config), tx, scale_factor),
      dataset=latents, batch_size=config.data.batch_size, rng=jax.random.fold_in(rng, 3),
      seed=config.seed + 1, meta={"scale_factor": scale_factor, "config": config.to_json_best_effort()},
      eval_fn=eval_fn, mesh=mesh, mesh_config=config.mesh)
  state, meta, history = loop.train_stage(stage)
  evals = {"evals_during_training": eval_history} if eval_history else {}
  return {"scale_factor": meta["scale_factor"], "train_steps": int(state.step), **loop.loss_summary(history), **evals}


def load_params(config, workdir: pathlib.Path, mesh):
  """(model, EMA params, latent scale factor) of the trained LDM under workdir/ldm."""
  model, _, template, _ = init_state(config, mesh, jax.random.key(0))
  state, meta = loop.restore_trained(workdir / "ldm", template)
  return model, state.ema_params, meta["scale_factor"]
