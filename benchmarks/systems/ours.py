"""Our system on the shared configs: UNet / AutoencoderKL from the diffusers config dicts, our DDIM.

  python benchmarks/systems/ours.py --workload=train|sample|vae|compile|profile [--size=cpu-small] [--repeats=5]
                                    [--variant=xla_default]   # a config.compiler.cpu_library_fusions setting

Run by benchmarks/run.py in the project's .venv; prints one `RESULT {json}` line.
"""

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

import configs  # noqa: E402
import jax_workloads  # noqa: E402
import timing  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from latent_diffusion import compiler, host_memory  # noqa: E402
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

  def train_step(self, unet: nn.Module | None = None):
    """jit((params, opt_state), latents, context, key) -> ((params, opt_state), loss), state donated; `unet`
    replaces self.unet (same parameters, e.g. another attention_impl)."""
    unet = self.unet if unet is None else unet

    def loss_fn(params, latents, context, key):
      t_key, n_key = jax.random.split(key)
      t = jax.random.randint(t_key, latents.shape[:1], 0, self.schedule.num_timesteps)
      noise = jax.random.normal(n_key, latents.shape)
      x_t = schedules.q_sample(self.schedule, latents, t, noise)
      pred = unet.apply({"params": params}, x_t, t, context=context)
      return jnp.mean((pred - noise) ** 2)

    def step(state, latents, context, key):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, latents, context, key)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0, compiler_options=compiler.jit_options())

  def model_flops(self) -> float:
    """FLOPs of the train step with unblocked attention (attention_impl 'xla'), from XLA's cost analysis of the
    lowered step: for the step we run it counts the blocked attention's loop bodies once."""
    cost = self.train_step(self.unet.clone(attention_impl="xla")).lower(*self.train_args()).cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])

  def train_args(self):
    return (self.unet_params, self.tx.init(self.unet_params)), self.latents, self.context, jax.random.key(2)

  def sample_fn(self):
    """jit(unet_params, vae_params, x_T, cond, uncond) -> images [B, H, W, 3]: 50 DDIM steps with CFG + decode."""
    def generate(unet_params, vae_params, x_T, cond, uncond):
      model_fn = lambda x, t, c: self.unet.apply({"params": unet_params}, x, t, context=c)
      z = samplers.ddim_sample(model_fn, self.schedule, x_T, jax.random.key(3), num_steps=configs.SAMPLE_STEPS,
                               cond=cond, uncond=uncond, guidance_scale=configs.GUIDANCE, **self.ddim_options)
      return self.vae.apply({"params": vae_params}, z / self.scale, method="decode")
    return jax.jit(generate, compiler_options=compiler.jit_options())

  def sample_args(self):
    return self.unet_params, self.vae_params, self.x_T, self.cond, self.uncond

  def encode_fn(self):
    return jax.jit(lambda p, x: self.vae.apply({"params": p}, x, method="encode").mean,
                   compiler_options=compiler.jit_options())

  def decode_fn(self):
    return jax.jit(lambda p, z: self.vae.apply({"params": p}, z, method="decode"),
                   compiler_options=compiler.jit_options())


def apply_variant(variant: str) -> str:
  """--variant = a config.compiler.cpu_library_fusions setting ('' or 'none': the default, auto)."""
  setting = "auto" if variant in ("", "none") else variant
  compiler.configure(ml_collections.ConfigDict({"compiler": {"cpu_library_fusions": setting}}))
  return setting


if __name__ == "__main__":
  if timing.parse_args(__doc__.splitlines()[0]).workload != "sample":   # as the train and encode jobs do
    host_memory.relaunch_with_allocator()   # (LD_PRELOAD= GLIBC_TUNABLES=glibc.malloc.hugetlb=0: glibc, 4 KiB)
  jax_workloads.main(__doc__, Setup, {"system": "ours", "ld_preload": os.environ.get("LD_PRELOAD", ""),
                                      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")},
                     apply_variant)
