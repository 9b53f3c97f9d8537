"""Our system on the shared configs: UNet / AutoencoderKL from the diffusers config dicts, our DDIM.

  python benchmarks/systems/ours.py --workload=train|sample|vae|compile [--size=cpu-small] [--repeats=5]

Run by benchmarks/run.py in the project's .venv; prints one `RESULT {json}` line.
"""

import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

import configs  # noqa: E402
import timing  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from latent_diffusion.diffusion import samplers, schedule as schedules  # noqa: E402
from latent_diffusion.weights import autoencoder as ae_weights, scheduler as scheduler_weights  # noqa: E402
from latent_diffusion.weights import unet as unet_weights  # noqa: E402


class Setup:
  """Models, random parameters and inputs of one size."""

  def __init__(self, size: str):
    cfg = configs.SIZES[size]
    self.cfg = cfg
    self.unet = unet_weights.from_diffusers_config(cfg["unet"])
    self.vae = ae_weights.from_diffusers_config(cfg["vae"])
    self.scale = ae_weights.scaling_factor(cfg["vae"])
    self.schedule, _, self.ddim_options = scheduler_weights.from_diffusers_scheduler(configs.SCHEDULER)
    h, w, c = configs.latent_shape(size)
    ctx = (cfg["context_tokens"], cfg["unet"]["cross_attention_dim"])
    rng = np.random.default_rng(0)
    self.latents = jnp.asarray(rng.normal(size=(cfg["train_batch"], h, w, c)), jnp.float32)
    self.context = jnp.asarray(rng.normal(size=(cfg["train_batch"], *ctx)), jnp.float32)
    self.x_T = jnp.asarray(rng.normal(size=(cfg["sample_batch"], h, w, c)), jnp.float32)
    self.cond = jnp.asarray(rng.normal(size=(cfg["sample_batch"], *ctx)), jnp.float32)
    self.uncond = jnp.asarray(rng.normal(size=(cfg["sample_batch"], *ctx)), jnp.float32)
    image = cfg["vae"]["sample_size"]
    self.images = jnp.asarray(rng.uniform(-1, 1, (cfg["vae_batch"], image, image, 3)), jnp.float32)
    self.vae_latents = jnp.asarray(rng.normal(size=(cfg["vae_batch"], h, w, c)), jnp.float32)
    init_unet = lambda r: nn.unbox(self.unet.init(r, self.latents[:1], jnp.zeros((1,), jnp.int32),
                                                  context=self.context[:1]))["params"]
    self.unet_params = jax.jit(init_unet)(jax.random.key(0))
    init_vae = lambda r: nn.unbox(self.vae.init({"params": r, "sample": r}, self.images[:1]))["params"]
    self.vae_params = jax.jit(init_vae)(jax.random.key(1))
    self.tx = optax.adamw(1e-4)

  def train_step(self):
    """jit((params, opt_state), latents, context, key) -> ((params, opt_state), loss), state donated."""
    def loss_fn(params, latents, context, key):
      t_key, n_key = jax.random.split(key)
      t = jax.random.randint(t_key, latents.shape[:1], 0, self.schedule.num_timesteps)
      noise = jax.random.normal(n_key, latents.shape)
      x_t = schedules.q_sample(self.schedule, latents, t, noise)
      pred = self.unet.apply({"params": params}, x_t, t, context=context)
      return jnp.mean((pred - noise) ** 2)

    def step(state, latents, context, key):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, latents, context, key)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)

  def train_args(self):
    return (self.unet_params, self.tx.init(self.unet_params)), self.latents, self.context, jax.random.key(2)

  def sample_fn(self):
    """jit(unet_params, vae_params, x_T, cond, uncond) -> images [B, H, W, 3]: 50 DDIM steps with CFG + decode."""
    def generate(unet_params, vae_params, x_T, cond, uncond):
      model_fn = lambda x, t, c: self.unet.apply({"params": unet_params}, x, t, context=c)
      z = samplers.ddim_sample(model_fn, self.schedule, x_T, jax.random.key(3), num_steps=configs.SAMPLE_STEPS,
                               cond=cond, uncond=uncond, guidance_scale=configs.GUIDANCE, **self.ddim_options)
      return self.vae.apply({"params": vae_params}, z / self.scale, method="decode")
    return jax.jit(generate)

  def sample_args(self):
    return self.unet_params, self.vae_params, self.x_T, self.cond, self.uncond

  def encode_fn(self):
    return jax.jit(lambda p, x: self.vae.apply({"params": p}, x, method="encode").mean)

  def decode_fn(self):
    return jax.jit(lambda p, z: self.vae.apply({"params": p}, z, method="decode"))


def compiled_stats(compiled) -> dict:
  """FLOPs (XLA cost analysis) and memory (bytes) of a compiled executable."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  mem = compiled.memory_analysis()
  out = {"flops": float(cost.get("flops", 0.0))}
  if mem is not None:
    out.update(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
               temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
               peak_bytes=mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)
  return out


def run_train(s: Setup, args) -> dict:
  step = s.train_step()
  state, latents, context, key = s.train_args()
  compiled = step.lower(state, latents, context, key).compile()
  box = [state]

  def run():
    box[0], loss = compiled(box[0], latents, context, key)
    loss.block_until_ready()

  result = timing.measure(run, warmup=args.warmup, repeats=args.repeats)
  result.update(compiled_stats(compiled), images_per_s=round(s.cfg["train_batch"] / result["median_s"], 3))
  return result


def run_sample(s: Setup, args) -> dict:
  fn = s.sample_fn()
  sargs = s.sample_args()
  start = time.perf_counter()
  compiled = fn.lower(*sargs).compile()
  compile_s = time.perf_counter() - start
  result = timing.measure(lambda: compiled(*sargs).block_until_ready(), warmup=args.warmup, repeats=args.repeats)
  batch = s.cfg["sample_batch"]
  result.update(compile_s=round(compile_s, 2), s_per_image=round(result["median_s"] / batch, 4),
                flops=compiled_stats(compiled)["flops"])
  return result


def run_vae(s: Setup, args) -> dict:
  out = {}
  for name, fn, x in (("encode", s.encode_fn(), s.images), ("decode", s.decode_fn(), s.vae_latents)):
    r = timing.measure(lambda f=fn, x=x: f(s.vae_params, x).block_until_ready(), warmup=args.warmup,
                       repeats=args.repeats)
    out[name] = {**r, "images_per_s": round(s.cfg["vae_batch"] / r["median_s"], 3)}
  return out


def run_compile(s: Setup, args) -> dict:
  """Seconds to lower + compile the train step and the sampler (with the persistent cache if given)."""
  out = {}
  for name, fn, fargs in (("train", s.train_step(), s.train_args()), ("sample", s.sample_fn(), s.sample_args())):
    start = time.perf_counter()
    fn.lower(*fargs).compile()
    out[f"{name}_compile_s"] = round(time.perf_counter() - start, 2)
  return out


def main():
  args = timing.parse_args(__doc__.splitlines()[0])
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  s = Setup(args.size)
  run = {"train": run_train, "sample": run_sample, "vae": run_vae, "compile": run_compile}[args.workload]
  timing.emit({"system": "ours", "jax": jax.__version__, **run(s, args)})


if __name__ == "__main__":
  main()
