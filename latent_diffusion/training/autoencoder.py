"""Stage 1: the perceptual autoencoder (KL or VQ) with LPIPS and a PatchGAN, as in the LDM paper.

One jitted, sharded step updates both players (the objective is in training/autoencoder_loss.py):
  autoencoder (+ the NLL's logvar): config.autoencoder.optim, Adam(0.5, 0.9) in the paper;
  discriminator:                    config.autoencoder.disc_optim.
Both, the EMA of the autoencoder (optional), the VQ codebook statistics and the data position are in the
checkpoint, so a resumed run continues bit for bit. The discriminator sees the reconstructions of the
autoencoder's forward pass of the same step (CompVis recomputes them after the autoencoder's update).
"""

import dataclasses
import logging
import pathlib
from typing import Any

import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from latent_diffusion import conditioning, data, parallel
from latent_diffusion.models import AutoencoderKL, VQModel
from latent_diffusion.models.discriminator import NLayerDiscriminator
from latent_diffusion.models.lpips import LPIPS, load_lpips_params
from latent_diffusion.training import autoencoder_eval, autoencoder_loss, codebook, loop
from latent_diffusion.training import state as state_lib
from latent_diffusion.training.checkpoint import StageCheckpoints
from latent_diffusion.training.state import make_optimizer

# The decoder's last convolution kernel: where the adaptive GAN weight compares the two gradients.
LAST_LAYER = ("decoder", "conv_out", "kernel")
CODEBOOK_UPDATES = ("loss", "ema")


@flax.struct.dataclass
class AutoencoderState:
  step: jax.Array              # int32 [], optimizer steps taken
  params: Any                  # the autoencoder
  ema_params: Any              # EMA of params, or None (autoencoder.use_ema=False)
  opt_state: Any               # autoencoder optimizer over (params, logvar)
  logvar: jax.Array            # float32 [], the reconstruction NLL's log-variance (KL)
  disc_params: Any             # the discriminator, or None (loss.disc_weight == 0)
  disc_opt_state: Any
  codebook_stats: Any          # codebook.CodebookStats (VQ) or None

  @property
  def eval_params(self):
    """What evaluation and later stages use: the EMA parameters if kept, else the trained ones."""
    return self.params if self.ema_params is None else self.ema_params


@dataclasses.dataclass(frozen=True)
class Stage1:
  """The modules and optimizers of a stage-1 run, built from config.autoencoder."""
  config: Any                                  # config.autoencoder
  model: AutoencoderKL | VQModel
  discriminator: NLayerDiscriminator | None
  tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation | None

  @property
  def is_vq(self) -> bool:
    return self.config.regularization == "vq"


def build_model(config) -> AutoencoderKL | VQModel:
  ae = config.autoencoder
  if ae.regularization == "vq":
    return VQModel(**ae.model, num_embeddings=ae.vq.num_embeddings, beta=ae.vq.beta, legacy=ae.vq.legacy)
  return AutoencoderKL(**ae.model)


def downsampling_factor(config) -> int:
  return 2 ** (len(config.autoencoder.model.ch_mult) - 1)


def build(config) -> Stage1:
  """Checks the stage-1 options and builds its modules and optimizers."""
  ae = config.autoencoder
  autoencoder_loss.check_loss_config(ae.loss, ae.regularization)
  if ae.vq.codebook_update not in CODEBOOK_UPDATES:
    raise ValueError(f"Unknown autoencoder.vq.codebook_update {ae.vq.codebook_update!r}; known: {CODEBOOK_UPDATES}.")
  steps = ae.loop.train_steps
  adversarial = ae.loss.disc_weight > 0
  discriminator = NLayerDiscriminator(**ae.discriminator) if adversarial else None
  disc_tx = make_optimizer(ae.disc_optim, steps) if adversarial else None
  return Stage1(config=ae, model=build_model(config), discriminator=discriminator,
                tx=make_optimizer(ae.optim, steps), disc_tx=disc_tx)


def load_lpips(config) -> dict | None:
  """LPIPS params if the perceptual loss needs them or weight files are configured (for the metric), else None.
  A missing or mis-shaped file is an error here, before training starts."""
  paths = config.autoencoder.lpips
  if config.autoencoder.loss.perceptual_weight > 0 or paths.vgg_path or paths.heads_path:
    return load_lpips_params(paths.vgg_path, paths.heads_path)
  return None


def check_data(config, example: dict) -> None:
  """The data's images fit the autoencoder: channels = model.in_channels, sides divisible by f."""
  image = example["image"]
  channels = config.autoencoder.model.in_channels
  if image.shape[-1] != channels:
    raise ValueError(f"The data set {config.data.name!r} gives {image.shape[-1]}-channel images {image.shape} but "
                     f"config.autoencoder.model.in_channels={channels}: set --config.autoencoder.model.in_channels="
                     f"{image.shape[-1]} (or use data with {channels} channels).")
  f = downsampling_factor(config)
  if image.shape[0] % f or image.shape[1] % f:
    raise ValueError(f"Images of {image.shape[0]}x{image.shape[1]} do not divide by the autoencoder's downsampling "
                     f"factor f={f} (config.autoencoder.model.ch_mult); choose config.data.image_size as a multiple.")


def _init_fn(stage1: Stage1, config):
  """rng -> the boxed (logically annotated) initial state of a stage-1 run."""
  height, width = data.image_shape(config.data)
  dummy = jnp.zeros((1, height, width, config.autoencoder.model.in_channels), jnp.float32)

  def init_boxed(rng):
    params = stage1.model.init({"params": rng, "sample": rng}, dummy)["params"]
    logvar = jnp.asarray(config.autoencoder.loss.logvar_init, jnp.float32)
    disc_params = None
    if stage1.discriminator is not None:
      disc_params = stage1.discriminator.init(jax.random.fold_in(rng, 1), dummy)["params"]
    stats = None
    if stage1.is_vq:
      stats = codebook.init_stats(nn.unbox(params)[codebook.CODEBOOK[0]][codebook.CODEBOOK[1]])
    return AutoencoderState(
        step=jnp.zeros((), jnp.int32), params=params, ema_params=params if config.autoencoder.use_ema else None,
        opt_state=stage1.tx.init((params, logvar)), logvar=logvar, disc_params=disc_params,
        disc_opt_state=stage1.disc_tx.init(disc_params) if stage1.discriminator else None, codebook_stats=stats)
  return init_boxed


def init_state(config, mesh, rng, stage1: Stage1 | None = None) -> tuple[Stage1, AutoencoderState, Any]:
  """(modules, state, state shardings) of a fresh stage-1 run, created sharded (modules built if not given)."""
  stage1 = build(config) if stage1 is None else stage1
  init_boxed = _init_fn(stage1, config)
  shardings = parallel.state_shardings(init_boxed, mesh, config.mesh, rng)
  state = jax.jit(lambda r: nn.unbox(init_boxed(r)), out_shardings=shardings)(rng)
  return stage1, state, shardings


def abstract_state(config, mesh, stage1: Stage1 | None = None) -> tuple[Stage1, AutoencoderState]:
  """(modules, the state's shapes, dtypes and shardings as jax.ShapeDtypeStruct leaves): a restore template
  that costs no initialisation."""
  stage1 = build(config) if stage1 is None else stage1
  init_boxed = _init_fn(stage1, config)
  shardings = parallel.state_shardings(init_boxed, mesh, config.mesh, jax.random.key(0))
  shapes = nn.unbox(jax.eval_shape(init_boxed, jax.random.key(0)))
  return stage1, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _forward(stage1: Stage1, x: jax.Array, rng: jax.Array):
  """forward(params) -> ((reconstruction, weighted regularization loss), aux) for generator_gradients.

  aux: {'metrics': {...}} plus, for VQ, the pre-quantization 'latents' [B, h, w, d] and code 'indices'.
  """
  sample_rng, dropout_rng = jax.random.split(rng)
  loss_config, model = stage1.config.loss, stage1.model
  if not stage1.is_vq:
    def forward(params):
      recon, posterior = model.apply({"params": params}, x, sample_posterior=True, deterministic=False,
                                     rngs={"sample": sample_rng, "dropout": dropout_rng})
      kl = jnp.mean(posterior.kl())                                       # sum over latents, mean over images
      return (recon, loss_config.kl_weight * kl), {"metrics": {"kl": kl}}
    return forward

  ema_codebook = stage1.config.vq.codebook_update == "ema"

  def vq_pass(module: VQModel, images):
    latents = module.encode(images, deterministic=False)
    quantized = module.quantize(latents)
    return module.decode(quantized.latents, force_not_quantize=True, deterministic=False), latents, quantized

  def forward(params):
    recon, latents, quantized = model.apply({"params": params}, x, method=vq_pass, rngs={"dropout": dropout_rng})
    if ema_codebook:  # the codebook follows the EMA; only the commitment term remains
      vq_loss = model.beta * jnp.mean(jnp.square(jax.lax.stop_gradient(quantized.latents) - latents))
    else:
      vq_loss = quantized.loss
    aux = {"metrics": {"codebook_loss": vq_loss}, "latents": latents, "indices": quantized.indices}
    return (recon, loss_config.codebook_weight * vq_loss), aux
  return forward


def make_train_step(stage1: Stage1) -> loop.StepFn:
  """step(state, batch {'image': [B, H, W, C] in [-1, 1]}, rng, constants {'lpips': params or None})
  -> (state, metrics). The step's key is fold_in(rng, state.step); `constants` are read-only step arguments
  (frozen LPIPS weights: passed replicated, neither donated nor checkpointed)."""
  cfg = stage1.config
  microbatches = cfg.optim.microbatches

  def gradients(state: AutoencoderState, constants: dict, batch: dict, index, rng: jax.Array) -> dict:
    """Everything one (micro)batch contributes: both players' gradients, metrics, codebook statistics."""
    x = batch["image"]
    rng = state_lib.microbatch_rng(rng, index, microbatches)
    lpips_params = constants["lpips"]
    perceptual = None if lpips_params is None else lambda a, b: LPIPS().apply({"params": lpips_params}, a, b)
    discriminate = None
    if stage1.discriminator is not None:
      disc_apply = lambda p, images: stage1.discriminator.apply({"params": p}, images)
      discriminate = lambda images: disc_apply(state.disc_params, images)
    (grads, logvar_grad), metrics, aux, recon = autoencoder_loss.generator_gradients(
        _forward(stage1, x, rng), state.params, x, state.logvar, state.step, cfg.loss, cfg.regularization,
        perceptual, discriminate, LAST_LAYER)
    out = {"grads": grads, "logvar_grad": logvar_grad, "metrics": {**metrics, **aux["metrics"]}}
    if discriminate is not None:
      out["disc_grads"], disc_metrics = autoencoder_loss.discriminator_gradients(
          disc_apply, state.disc_params, x, recon, state.step, cfg.loss)
      out["metrics"].update(disc_metrics)
    if stage1.is_vq:
      out["codebook"] = codebook.batch_statistics(aux["latents"], aux["indices"], cfg.vq.num_embeddings,
                                                  jax.random.fold_in(rng, 1), index, microbatches)
    return out

  def train_step(state: AutoencoderState, batch: dict, rng: jax.Array, constants: dict):
    rng = jax.random.fold_in(rng, state.step)
    out = state_lib.mean_over_microbatches(lambda micro, i: gradients(state, constants, micro, i, rng), batch,
                                           microbatches)
    metrics = {**out["metrics"], "grad_norm": optax.global_norm(out["grads"])}
    updates, opt_state = stage1.tx.update((out["grads"], out["logvar_grad"]), state.opt_state,
                                          (state.params, state.logvar))
    params, logvar = optax.apply_updates((state.params, state.logvar), updates)
    if not cfg.loss.learn_logvar:
      logvar = state.logvar
    stats = state.codebook_stats
    if stage1.is_vq:
      stats, new_codebook, codebook_metrics = codebook.update(
          stats, params[codebook.CODEBOOK[0]][codebook.CODEBOOK[1]], codebook.total(out["codebook"], microbatches),
          cfg.vq)
      params = codebook.with_codebook(params, new_codebook)
      metrics.update(codebook_metrics)
    ema = None
    if state.ema_params is not None:
      ema = state_lib.ema_update(state.ema_params, params, state.step, cfg.loop.ema_decay)
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if stage1.discriminator is not None:
      disc_updates, disc_opt_state = stage1.disc_tx.update(out["disc_grads"], disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, disc_updates)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state, logvar=logvar,
                              disc_params=disc_params, disc_opt_state=disc_opt_state, codebook_stats=stats)
    return new_state, metrics

  return train_step


def first_stage_images(config, split: str) -> grain.MapDataset:
  """Examples {'image': [H, W, C]} of config.data's `split` as the first stage models them: the images, or for
  residual super-resolution their bicubic residuals (conditioning.first_stage_image_fn)."""
  transform = conditioning.first_stage_image_fn(config, downsampling_factor(config))
  return data.make_dataset(config.data, split).map(lambda ex: {"image": transform(ex["image"])})


def validation_images(config) -> np.ndarray:
  """Up to autoencoder.eval_examples validation images [N, H, W, C] (first_stage_images), in data-set order."""
  dataset = first_stage_images(config, "val").to_iter_dataset()
  images = []
  for example in dataset:
    images.append(example["image"])
    if len(images) == config.autoencoder.eval_examples:
      break
  if not images:
    raise ValueError(f"The validation split of {config.data.name!r} is empty: stage 1 evaluates on it.")
  return np.stack(images)


def train(config, workdir: pathlib.Path, mesh) -> dict:
  """Trains (or resumes) stage 1 under workdir/autoencoder; returns its summary metrics."""
  rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  stage1 = build(config)
  lpips_params = load_lpips(config)              # missing / wrong weights fail here, before any training
  train_set = first_stage_images(config, "train")
  check_data(config, next(iter(train_set.to_iter_dataset())))
  if loop.latest_meta(workdir / "autoencoder") is None:
    stage1, state, shardings = init_state(config, mesh, rng, stage1)
  else:  # resuming: the checkpoint replaces the state, initialising it would be wasted work
    stage1, state = abstract_state(config, mesh, stage1)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
  constants = {"lpips": jax.device_put(lpips_params, parallel.replicated(mesh))}
  evaluator = autoencoder_eval.Evaluator(stage1.model, stage1.is_vq, validation_images(config), lpips_params,
                                         config.autoencoder.grid_images, batch_size=config.data.batch_size)
  stage = loop.Stage(
      name="autoencoder", loop_config=config.autoencoder.loop, workdir=workdir / "autoencoder",
      state=state, state_shardings=shardings, step_fn=make_train_step(stage1),
      dataset=train_set, batch_size=loop.global_batch_size(config.autoencoder.loop, config.data),
      rng=jax.random.fold_in(rng, 2), seed=config.seed, meta={"config": config.to_json_best_effort()},
      eval_fn=lambda s: evaluator(s.eval_params), mesh=mesh, mesh_config=config.mesh,
      step_args=(constants,), step_args_shardings=(parallel.replicated(mesh),),
      learning_rate=state_lib.learning_rate_schedule(config.autoencoder.optim, config.autoencoder.loop.train_steps))
  state, _, history = loop.train_stage(stage)
  final = evaluator(state.eval_params, with_grid=False)
  logging.info("autoencoder: validation %s", final)
  return {**{f"val_{k}": v for k, v in final.items()}, "train_steps": int(state.step),
          "global_batch_size": stage.batch_size, **loop.loss_summary(history)}


def load_params(config, workdir: pathlib.Path, mesh):
  """(model, parameters for inference) of the trained autoencoder under workdir/autoencoder: its EMA parameters,
  or the trained ones without EMA (autoencoder.use_ema=False); nothing else of the state is read."""
  stage1, template = abstract_state(config, mesh)
  name = "params" if template.ema_params is None else "ema_params"
  checkpoints = StageCheckpoints(workdir / "autoencoder" / "checkpoints")
  try:
    return stage1.model, checkpoints.restore_subtree(name, getattr(template, name))
  finally:
    checkpoints.close()
