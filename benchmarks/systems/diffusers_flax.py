"""diffusers 0.39.0 Flax on the shared configs: FlaxUNet2DConditionModel, FlaxAutoencoderKL, FlaxDDIMScheduler.

  python benchmarks/systems/diffusers_flax.py --workload=train|sample|vae|compile [--size=cpu-small]

Run by benchmarks/run.py in the peer's own venv (benchmarks/peers/diffusers_flax.txt). The train
step follows diffusers' train_text_to_image_flax.py (DDPM add_noise, epsilon MSE, optax adamw, state
donated, here jit instead of pmap on one device); sampling follows FlaxStableDiffusionPipeline._generate
(lax.fori_loop over FlaxDDIMScheduler steps, CFG on a doubled batch, then vae.decode). NCHW as theirs.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import configs  # noqa: E402
import jax_workloads  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from diffusers import (FlaxAutoencoderKL, FlaxDDIMScheduler, FlaxDDPMScheduler,  # noqa: E402
                       FlaxUNet2DConditionModel)


def _config(cfg: dict) -> dict:
  return {k: v for k, v in cfg.items() if not k.startswith("_")}


class Setup:
  def __init__(self, size: str):
    cfg = configs.SIZES[size]
    self.cfg = cfg
    self.unet = FlaxUNet2DConditionModel.from_config(_config(cfg["unet"]))
    self.vae = FlaxAutoencoderKL.from_config(_config(cfg["vae"]))
    self.scale = cfg["vae"]["scaling_factor"]
    self.ddim = FlaxDDIMScheduler.from_config(_config(configs.SCHEDULER))
    self.ddpm = FlaxDDPMScheduler.from_config(_config(configs.SCHEDULER))
    h, w, c = configs.latent_shape(size)
    ctx = (cfg["context_tokens"], cfg["unet"]["cross_attention_dim"])
    rng = np.random.default_rng(0)
    nchw = lambda a: jnp.asarray(np.moveaxis(a, -1, 1), jnp.float32)
    self.latents = nchw(rng.normal(size=(cfg["train_batch"], h, w, c)))
    self.context = jnp.asarray(rng.normal(size=(cfg["train_batch"], *ctx)), jnp.float32)
    self.x_T = nchw(rng.normal(size=(cfg["sample_batch"], h, w, c)))
    self.cond = jnp.asarray(rng.normal(size=(cfg["sample_batch"], *ctx)), jnp.float32)
    self.uncond = jnp.asarray(rng.normal(size=(cfg["sample_batch"], *ctx)), jnp.float32)
    image = cfg["vae"]["sample_size"]
    self.images = nchw(rng.uniform(-1, 1, (cfg["vae_batch"], image, image, 3)))
    self.vae_latents = nchw(rng.normal(size=(cfg["vae_batch"], h, w, c)))
    self.unet_params = self.unet.init_weights(jax.random.PRNGKey(0))
    self.vae_params = self.vae.init_weights(jax.random.PRNGKey(1))
    self.tx = optax.adamw(1e-4)

  def train_step(self):
    ddpm_state = self.ddpm.create_state()

    def loss_fn(params, latents, context, key):
      t_key, n_key = jax.random.split(key)
      noise = jax.random.normal(n_key, latents.shape)
      t = jax.random.randint(t_key, latents.shape[:1], 0, self.ddpm.config.num_train_timesteps)
      noisy = self.ddpm.add_noise(ddpm_state, latents, noise, t)
      pred = self.unet.apply({"params": params}, noisy, t, context, train=True).sample
      return jnp.mean((pred - noise) ** 2)

    def step(state, latents, context, key):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, latents, context, key)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)

  def train_args(self):
    return (self.unet_params, self.tx.init(self.unet_params)), self.latents, self.context, jax.random.PRNGKey(2)

  def sample_fn(self):
    steps, guidance = configs.SAMPLE_STEPS, configs.GUIDANCE

    def generate(unet_params, vae_params, latents, cond, uncond):
      context = jnp.concatenate([uncond, cond])
      state = self.ddim.set_timesteps(self.ddim.create_state(), num_inference_steps=steps, shape=latents.shape)

      def body(i, carry):
        latents, state = carry
        t = jnp.array(state.timesteps, dtype=jnp.int32)[i]
        x = self.ddim.scale_model_input(state, jnp.concatenate([latents] * 2), t)
        out = self.unet.apply({"params": unet_params}, x, jnp.broadcast_to(t, x.shape[:1]), context).sample
        uncond_out, cond_out = jnp.split(out, 2, axis=0)
        return self.ddim.step(state, uncond_out + guidance * (cond_out - uncond_out), t, latents).to_tuple()

      latents, _ = jax.lax.fori_loop(0, steps, body, (latents * state.init_noise_sigma, state))
      return self.vae.apply({"params": vae_params}, latents / self.scale, method=self.vae.decode).sample
    return jax.jit(generate)

  def sample_args(self):
    return self.unet_params, self.vae_params, self.x_T, self.cond, self.uncond

  def encode_fn(self):
    return jax.jit(lambda p, x: self.vae.apply({"params": p}, x, method=self.vae.encode).latent_dist.mean)

  def decode_fn(self):
    return jax.jit(lambda p, z: self.vae.apply({"params": p}, z, method=self.vae.decode).sample)


def system_info() -> dict:
  import diffusers  # pylint: disable=import-outside-toplevel
  return {"system": "diffusers_flax", "diffusers": diffusers.__version__}


if __name__ == "__main__":
  jax_workloads.main(__doc__, Setup, system_info())
