"""Stage 2: the latent diffusion UNet, trained on latents of a frozen first stage, under any conditioning.

Each step samples z ~ q(z|x) from the stored posterior moments, scales it, noises it at a random t
and regresses the UNet on the epsilon or v target. The conditioning (latent_diffusion.conditioning)
turns each example's condition inputs into UNet inputs and swaps in the null condition with
probability drop_prob, so that one network serves classifier-free guidance.

Trained parameters are {'unet', 'conditioner'?} (a jointly trained or fine-tuned text encoder);
frozen ones (a pretrained text encoder, a precomputed null context) are a read-only step argument
placed on the mesh once. The UNet starts at random on the autoencoder of config.autoencoder, or from
an imported pipeline (config.ldm.init_from: UNet, VAE, text encoder, schedule and latent scale).
"""

import dataclasses
import functools
import json
import logging
import pathlib

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import conditioning as conditioning_lib, configuration, data, parallel
from latent_diffusion.bundle import LatentDiffusion, unet_init_fn
from latent_diffusion.data import latent_shards
from latent_diffusion.diffusion import NoiseSchedule, q_sample, training_target
from latent_diffusion.models import DiagonalGaussian, UNet
from latent_diffusion.training import autoencoder, loop, resume
from latent_diffusion.training import state as state_lib
from latent_diffusion.training.state import create_train_state, make_optimizer
from latent_diffusion.weights import pretrained, single_file

LATENT_FIELDS = ("latent_mean", "latent_logvar")


def schedule_config(config) -> dict:
  """NoiseSchedule.create keyword arguments of config.ldm.diffusion."""
  d = config.ldm.diffusion
  return dict(name=d.beta_schedule, num_timesteps=d.num_timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
              rescale_zero_terminal_snr=d.rescale_zero_terminal_snr)


def build_schedule(config) -> NoiseSchedule:
  return NoiseSchedule.create(**schedule_config(config))


def _import(config) -> LatentDiffusion:
  """The pipeline config.ldm.init_from names (a diffusers folder or a single-file checkpoint)."""
  path = pathlib.Path(config.ldm.init_from)
  if path.is_dir():
    return pretrained.load_diffusers(path)
  if not config.ldm.conditioning.text.tokenizer_path:
    raise ValueError(f"ldm.init_from={path} is a single-file checkpoint: set config.ldm.conditioning.text."
                     f"tokenizer_path to the tokenizer folder of its text encoder.")
  return single_file.load_single_file(path, config.ldm.conditioning.text.tokenizer_path,
                                      prediction_type=config.ldm.diffusion.prediction_type,
                                      image_size=config.data.image_size)


def _checked_unet(unet: UNet, conditioning, where: str) -> UNet:
  """`unet` if it takes what `conditioning` gives (context width, label count), else ValueError naming both."""
  for field, value in conditioning.unet_fields().items():
    if getattr(unet, field) != value:
      raise ValueError(f"{where}: the UNet has {field}={getattr(unet, field)}, the conditioning "
                       f"({conditioning.describe()}) gives {value}: the text encoder / tokenizer / data do not "
                       f"match this UNet.")
  if unet.context_dim is not None and "text" not in conditioning:
    raise ValueError(f"{where}: the UNet has cross-attention (context_dim={unet.context_dim}); condition it on "
                     f"text (config.ldm.conditioning.kinds).")
  return unet


def describe(config, workdir: pathlib.Path | None, mesh, text_source: str | None = None,
             text_encoder: tuple | None = None) -> LatentDiffusion:
  """Stage 2's model as a bundle: modules, conditioning, schedule and the first stage's weights.

  params holds 'autoencoder' (the trained one under workdir/autoencoder; none when workdir is None, for
  tests of the step) and, when fine-tuning, the imported 'unet'; scale_factor is the imported one or
  None (fixed when training starts: `with_scale_factor`). text_source overrides the text conditioner's
  source (sampling reads prompts: 'caption'). text_encoder = (tokenizer, encoder module, params) stands in for a
  pretrained text encoder without encoder_path (benchmarks/aot.py: a CLIP-sized module with abstract weights).
  """
  height, width = data.image_shape(config.data)
  if config.ldm.init_from:
    imported = _import(config)
    text = imported.conditioning["text"]
    pipeline_text = None if config.ldm.conditioning.text.encoder_path else (text.tokenizer, text.encoder,
                                                                            text.encoder_params)
    conditioning = conditioning_lib.from_config(config, text_source, pipeline_text)
    m = config.ldm.model
    unet = _checked_unet(imported.unet.clone(dtype=m.dtype, remat_policy=m.remat_policy,
                                             attention_impl=m.attention_impl, linear_impl=m.linear_impl),
                         conditioning, f"ldm.init_from={config.ldm.init_from}")
    f = imported.vae_scale
    conditioning = conditioning.with_first_stage(imported.autoencoder, imported.params["autoencoder"],
                                                 imported.scale_factor)
    return dataclasses.replace(
        imported, unet=unet, conditioning=conditioning,
        latent_shape=(height // f, width // f, imported.latent_shape[2]),
        params={"unet": imported.params["unet"], "autoencoder": imported.params["autoencoder"]})
  if workdir is None:
    ae, first_stage = autoencoder.build_model(config), {}
  else:
    ae, ae_params = autoencoder.load_params(config, first_stage_workdir(config, workdir), mesh)
    first_stage = {"autoencoder": ae_params}
  conditioning = conditioning_lib.from_config(config, text_source, text_encoder).with_first_stage(
      ae, first_stage.get("autoencoder"), None)
  unet = UNet(out_channels=config.autoencoder.model.embed_dim, **config.ldm.model, **conditioning.unet_fields())
  f = autoencoder.downsampling_factor(config)
  sample = config.sample
  return LatentDiffusion(
      unet=unet, autoencoder=ae, conditioning=conditioning, schedule=build_schedule(config),
      schedule_config=schedule_config(config), scale_factor=None,
      latent_shape=(height // f, width // f, config.autoencoder.model.embed_dim), sampler=sample.sampler,
      sampler_options=dict(prediction_type=config.ldm.diffusion.prediction_type, spacing=sample.spacing,
                           eta=sample.eta),
      params=first_stage)


def first_stage_workdir(config, workdir: pathlib.Path) -> pathlib.Path:
  """The workdir whose autoencoder/ is stage 2's first stage: config.ldm.autoencoder_workdir, else the run's own."""
  return pathlib.Path(config.ldm.autoencoder_workdir) if config.ldm.autoencoder_workdir else workdir


def check_first_stage(config, workdir: pathlib.Path) -> None:
  """ValueError, before anything is built, unless the first-stage workdir holds an autoencoder checkpoint trained
  with this config's config.autoencoder (else stage 2 would train on, or sample through, another model)."""
  if config.ldm.init_from:
    return
  ae_workdir = first_stage_workdir(config, workdir)
  meta = loop.latest_meta(ae_workdir / "autoencoder")
  if meta is None:
    raise ValueError(f"Stage 2 needs a trained autoencoder: there is no checkpoint under {ae_workdir / 'autoencoder'}. "
                     f"Run stage 1 in this workdir first, or point --config.ldm.autoencoder_workdir at the workdir of "
                     f"the run whose autoencoder to use.")
  saved = resume.flatten(json.loads(meta["config"])["autoencoder"], "autoencoder")
  now = resume.flatten(json.loads(config.to_json_best_effort())["autoencoder"], "autoencoder")
  differ = [f"--config.{key}={saved[key]!r} (this config: {now.get(key)!r})" for key in sorted(saved)
            if key.startswith(("autoencoder.model.", "autoencoder.regularization", "autoencoder.vq.num_embeddings"))
            and saved[key] != now.get(key)]
  if differ:
    raise ValueError(f"The autoencoder under {ae_workdir / 'autoencoder'} was trained with another architecture than "
                     f"config.autoencoder describes; give the options it was trained with: {' '.join(differ)}.")


def check_latents(config, model: LatentDiffusion, workdir: pathlib.Path, mesh, latents: grain.MapDataset) -> dict:
  """Up-front checks of pre-encoded latents (config.ldm.latents_path) against the model; returns the manifest.

  The encode job finished and wrote records (latent_shards.read_manifest), of the latent shape this config makes,
  with the encoder that this run samples through (sha256 of its parameters).
  """
  manifest = latent_shards.read_manifest(config.ldm.latents_path)
  where = f"config.ldm.latents_path={config.ldm.latents_path}"
  stored = manifest.get("latent_shape")
  if stored is not None and tuple(stored) != tuple(model.latent_shape):
    raise ValueError(f"{where} holds latents of shape {tuple(stored)} (images of {manifest.get('image_size')} pixels) "
                     f"but this config makes {tuple(model.latent_shape)} (config.data.image_size="
                     f"{config.data.image_size}, f={autoencoder.downsampling_factor(config)}, "
                     f"config.autoencoder.model.embed_dim={config.autoencoder.model.embed_dim}): set "
                     f"--config.data.image_size={manifest.get('image_size')} as the encode job had.")
  if config.ldm.init_from:
    params = model.params["autoencoder"]
  else:
    _, params = autoencoder.load_params(config, first_stage_workdir(config, workdir), mesh)
  from latent_diffusion import encoding  # pylint: disable=import-outside-toplevel  (the encode job's module)
  if encoding.params_digest(params) != manifest["encoder_sha256"]:
    ours = config.ldm.init_from or first_stage_workdir(config, workdir) / "autoencoder"
    raise ValueError(f"{where} was encoded by {manifest['encoder']}, not by this run's first stage ({ours}): "
                     f"sampling would decode with another autoencoder. Point --config.ldm.autoencoder_workdir at "
                     f"{manifest.get('autoencoder_workdir') or 'the run that encoded them'}, or re-encode.")
  return manifest


def check_first_example(model: LatentDiffusion, latents: grain.MapDataset, where: str) -> None:
  """Runs the conditioning's preparation on the first readable example, so that data the model cannot train on
  (no label for a class-conditional model, a missing caption field, a wrong latent shape) fails here, before
  compiling, with the conditioner's own message."""
  example = next((latents[i] for i in range(min(len(latents), 64)) if latents[i] is not None), None)
  if example is None:
    raise ValueError(f"{where}: no readable example among the first {min(len(latents), 64)}.")
  shape = tuple(example["latent_mean"].shape)
  if shape != tuple(model.latent_shape):
    raise ValueError(f"{where}: latents of shape {shape}, the model is configured for {tuple(model.latent_shape)}.")
  model.conditioning.prepare(example)


def with_scale_factor(model: LatentDiffusion, scale_factor: float) -> LatentDiffusion:
  """`model` with its latent scale fixed, conditioners in the first stage's space bound to it."""
  conditioning = model.conditioning.with_first_stage(model.autoencoder, model.params.get("autoencoder"), scale_factor)
  return dataclasses.replace(model, scale_factor=scale_factor, conditioning=conditioning)


def encode_split(config, model: LatentDiffusion, split: str, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Posterior mean / logvar [N, h, w, c] of every image of a split (of what the conditioning has the first stage
  encode: Conditioner.first_stage_image), plus its other fields (the images too when a conditioner reads pixels);
  with text source 'context', also the frozen text encoder's outputs of its captions.

  One compiled encoder call per batch; the last batch is padded so that it compiles once.
  """
  ae = model.autoencoder
  # KL: q(z | x); VQ: the pre-quantization latents as a point mass (the decoder quantizes samples).
  encode = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=type(ae).latent_distribution))
  columns: dict[str, list] = {}
  for batch in data.make_dataset(config.data, split).to_iter_dataset().batch(batch_size):
    n = len(batch["image"])
    pixels = batch["image"] if model.conditioning.reads_image else batch.pop("image")
    images = np.pad(np.stack([model.conditioning.first_stage_image(x) for x in pixels]),
                    [(0, batch_size - n)] + [(0, 0)] * 3)
    posterior = jax.device_get(encode(model.params["autoencoder"], images))
    for name, value in {"latent_mean": posterior.mean[:n], "latent_logvar": posterior.logvar[:n], **batch}.items():
      columns.setdefault(name, []).append(np.asarray(value))
  arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
  if "text" in model.conditioning and model.conditioning["text"].source == "context":
    if "caption" not in arrays:
      raise ValueError(f"config.data.name={config.data.name!r} gives no captions to encode for text conditioning.")
    captions, index = np.unique(np.array(["" if c is None else str(c) for c in arrays["caption"]]),
                                return_inverse=True)          # each distinct caption encoded once
    arrays["context"] = model.conditioning["text"].encode_texts(list(captions))[index]
  return arrays


def raw_latents(config, model: LatentDiffusion) -> grain.MapDataset:
  """Examples {'latent_mean', 'latent_logvar' [h, w, c], other record fields}: the shards of
  latent_diffusion.cli.encode under config.ldm.latents_path, or config.data encoded here in memory."""
  if config.ldm.latents_path:
    if model.conditioning.reads_image:
      raise ValueError(f"{model.conditioning.describe()} conditioning reads each image's pixels, which latent shards "
                       f"(config.ldm.latents_path={config.ldm.latents_path}) do not hold: leave latents_path unset to "
                       f"encode config.data in memory.")
    return latent_shards.latent_dataset(config.ldm.latents_path)
  return data.from_arrays(encode_split(config, model, "train"))


class PrepareExample(grain.transforms.Map):
  """Record -> {latent moments, the conditioning's model inputs}; None when the conditioning drops it."""

  def __init__(self, conditioning):
    self.conditioning = conditioning

  def map(self, example: dict) -> dict | None:
    inputs = self.conditioning.prepare(example)
    if inputs is None:
      return None
    return {**{name: example[name] for name in LATENT_FIELDS}, **inputs}


def std_scale_factor(latents: grain.MapDataset, rng: jax.Array, batch_size: int) -> float:
  """LDM's scale_by_std: 1 / std of posterior samples of the first training batch."""
  first = [ex for ex in (latents[i] for i in range(min(batch_size, len(latents)))) if ex is not None]  # None: corrupt
  posterior = DiagonalGaussian(mean=np.stack([ex["latent_mean"] for ex in first]),
                               logvar=np.stack([ex["latent_logvar"] for ex in first]))
  return float(1.0 / jnp.std(posterior.sample(rng)))


def make_train_step(model: LatentDiffusion, tx, scale_factor: float, ema_decay: float,
                    microbatches: int = 1) -> loop.StepFn:
  """step(state, batch, rng, frozen) -> (state, metrics); `frozen` = the conditioning's frozen params."""
  fields = model.conditioning.batch_fields()

  def loss_fn(params, batch: dict, rng: jax.Array, frozen: dict):
    z_rng, t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 5)
    posterior = DiagonalGaussian(mean=batch["latent_mean"], logvar=batch["latent_logvar"])
    z0 = posterior.sample(z_rng) * scale_factor                       # [B, h, w, c]
    t = jax.random.randint(t_rng, z0.shape[:1], 0, model.schedule.num_timesteps)
    noise = jax.random.normal(noise_rng, z0.shape, z0.dtype)
    x_t = q_sample(model.schedule, z0, t, noise)
    target = training_target(model.schedule, z0, noise, t, model.prediction_type)
    cond_params = conditioning_lib.merge_params(params.get("conditioner", {}), frozen)
    cond = model.conditioning.train_unet_kwargs(cond_params, {f: batch[f] for f in fields}, drop_rng)
    out = model.unet.apply({"params": params["unet"]}, x_t, t, **cond, deterministic=False,
                           rngs={"dropout": dropout_rng})
    loss = jnp.mean(jnp.square(out.astype(jnp.float32) - target))
    return loss, {"loss": loss}

  def train_step(state, batch: dict, rng: jax.Array, frozen: dict):
    step = state_lib.make_train_step(functools.partial(loss_fn, frozen=frozen), tx, ema_decay, microbatches)
    return step(state, batch, rng)

  return train_step


def trainable_init_fn(model: LatentDiffusion):
  """rng -> boxed {'unet', 'conditioner'?}: the parameters stage 2 trains."""
  unet_init = unet_init_fn(model.unet, model.conditioning, model.latent_shape)

  def init(rng):
    unet_rng, cond_rng = jax.random.split(rng)
    conditioner = model.conditioning.init_params(cond_rng)
    return {"unet": unet_init(unet_rng), **({"conditioner": conditioner} if conditioner else {})}

  return init


def init_state(config, model: LatentDiffusion, mesh, rng):
  """(tx, state, state_shardings) of a fresh stage-2 run; imported UNet weights (if any) are the start."""
  tx = make_optimizer(config.ldm.optim, config.ldm.loop.train_steps)
  values = {"unet": model.params["unet"]} if "unet" in model.params else None
  state, shardings = create_train_state(trainable_init_fn(model), tx, rng, mesh, config.mesh, values)
  return tx, state, shardings


def frozen_params(model: LatentDiffusion, mesh, mesh_config) -> tuple[dict, dict]:
  """(arrays, shardings) of the conditioning's frozen parameters, on the mesh."""
  return parallel.place(model.conditioning.frozen_params(), mesh, mesh_config)


def train(config, workdir: pathlib.Path, mesh) -> dict:
  """Trains (or resumes) stage 2 under workdir/ldm; returns its summary metrics."""
  rng = jax.random.fold_in(jax.random.key(config.seed), 2)
  check_first_stage(config, workdir)
  # Pre-encoded latents need no first stage here (sampling loads it).
  model = describe(config, None if config.ldm.latents_path else workdir, mesh)
  logging.info("ldm: %s conditioning; UNet %s.", model.conditioning.describe(),
               "imported from " + config.ldm.init_from if config.ldm.init_from else "from scratch")
  latents = raw_latents(config, model)
  if config.ldm.latents_path:
    check_latents(config, model, workdir, mesh, latents)
  check_first_example(model, latents, f"config.ldm.latents_path={config.ldm.latents_path}" if config.ldm.latents_path
                      else f"config.data ({config.data.name!r}) encoded")
  resumed = loop.latest_meta(workdir / "ldm")
  if resumed is not None:
    scale_factor = resumed["scale_factor"]  # keep the constant the run started with
  elif model.scale_factor is not None:
    scale_factor = model.scale_factor
  elif config.ldm.scale_by_std:
    scale_factor = std_scale_factor(latents, jax.random.fold_in(rng, 1), config.data.batch_size)
  else:
    scale_factor = config.ldm.scale_factor
  logging.info("ldm: latent scale factor %.5f.", scale_factor)
  model = with_scale_factor(model, scale_factor)
  tx, state, shardings = init_state(config, model, mesh, jax.random.fold_in(rng, 2))
  frozen, frozen_shardings = frozen_params(model, mesh, config.mesh)
  from latent_diffusion.evaluation import periodic  # pylint: disable=import-outside-toplevel  (it imports this module)
  sampling_model = functools.cache(lambda: _sampling_model(config, workdir, mesh))    # built at the first evaluation
  eval_fn, eval_history = periodic.training_eval_fn(
      config, workdir, mesh, lambda state: _evaluated_model(sampling_model(), scale_factor, state))
  stage = loop.Stage(
      name="ldm", loop_config=config.ldm.loop, workdir=workdir / "ldm", state=state, state_shardings=shardings,
      step_fn=make_train_step(model, tx, scale_factor, config.ldm.loop.ema_decay, config.ldm.optim.microbatches),
      dataset=latents.map(PrepareExample(model.conditioning)).filter(lambda ex: ex is not None),
      batch_size=loop.global_batch_size(config.ldm.loop, config.data),
      rng=jax.random.fold_in(rng, 3), seed=config.seed + 1,
      meta={"scale_factor": scale_factor, "config": config.to_json_best_effort()}, eval_fn=eval_fn, mesh=mesh,
      mesh_config=config.mesh, step_args=(frozen,), step_args_shardings=(frozen_shardings,),
      learning_rate=state_lib.learning_rate_schedule(config.ldm.optim, config.ldm.loop.train_steps))
  state, meta, history = loop.train_stage(stage)
  skipped = model.conditioning["text"].skips.counts() if "text" in model.conditioning else {}
  evals = {"evals_during_training": eval_history} if eval_history else {}
  return {"scale_factor": meta["scale_factor"], "train_steps": int(state.step), "global_batch_size": stage.batch_size,
          **({"skipped": skipped} if skipped else {}), **loop.loss_summary(history), **evals}


def _sampling_model(config, workdir: pathlib.Path, mesh) -> LatentDiffusion:
  """Stage 2's model as sampling sees it (prompts, not stored contexts), with the first stage's weights."""
  model = describe(config, workdir, mesh, text_source="caption")
  frozen, _ = frozen_params(model, mesh, config.mesh)
  return dataclasses.replace(model, params={**model.params, "conditioner": frozen})


def _evaluated_model(model: LatentDiffusion, scale_factor: float, state) -> LatentDiffusion:
  """`model` with a training state's EMA weights (for evaluation during training)."""
  conditioner = conditioning_lib.merge_params(state.ema_params.get("conditioner", {}), model.params["conditioner"])
  return with_scale_factor(dataclasses.replace(model, params={
      "unet": state.ema_params["unet"], "autoencoder": model.params["autoencoder"], "conditioner": conditioner}),
      scale_factor)


def run_config(workdir: pathlib.Path):
  """The config a run's stage 2 was trained with (saved with its checkpoints)."""
  meta = loop.latest_meta(workdir / "ldm")
  if meta is None:
    raise FileNotFoundError(f"No LDM checkpoint under {workdir / 'ldm'}; train one with latent_diffusion.cli.train first.")
  return configuration.config_from_json(meta["config"]), meta


def load_trained(workdir: pathlib.Path, mesh=None, config=None) -> LatentDiffusion:
  """The trained run under `workdir` as a bundle for sampling / export: EMA weights only (the optimizer
  state is never read), placed on `mesh` (default: all devices) by their logical axes."""
  saved_config, meta = run_config(workdir)
  config = saved_config if config is None else config
  mesh = parallel.make_mesh(config.mesh) if mesh is None else mesh
  model = with_scale_factor(describe(config, workdir, mesh, text_source="caption"), meta["scale_factor"])
  init = trainable_init_fn(model)
  shardings = parallel.state_shardings(init, mesh, config.mesh, jax.random.key(0))
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          nn.unbox(jax.eval_shape(init, jax.random.key(0))), shardings)
  ema = loop.restore_ema_params(workdir / "ldm", abstract)
  frozen, _ = frozen_params(model, mesh, config.mesh)
  params = {"unet": ema["unet"], "autoencoder": model.params["autoencoder"],
            "conditioner": conditioning_lib.merge_params(ema.get("conditioner", {}), frozen)}
  return dataclasses.replace(model, params=params)
