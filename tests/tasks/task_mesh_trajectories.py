"""Run as a subprocess with 8 emulated CPU devices: 3 stage-2 train steps of a model conditioned on every task
conditioner at once (inpainting: masks drawn on device + the frozen first-stage encoder in the step; super-
resolution: low-resolution images with per-step noise; semantic maps; layouts through the jointly trained
transformer), on a (1, 1, 1) and a (2, 2, 2) mesh.

Prints one JSON line: {mesh shape: {"losses": [...], "concat_channels": int, "context_width": int}}.
"""

import dataclasses
import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from latent_diffusion import data, parallel  # noqa: E402
from latent_diffusion.training import ldm, loop  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

KINDS = ("inpaint", "low_res", "segmentation", "layout")
TASK_OVERRIDES = ("data.name=shapes", "data.image_size=16", "data.num_classes=12", "data.batch_size=8",
                  "autoencoder.model.in_channels=3", f"ldm.conditioning.kinds={KINDS}",
                  "ldm.conditioning.drop_prob=0.25", "ldm.conditioning.low_res.noise_std=0.1",
                  "ldm.conditioning.layout.width=16", "ldm.conditioning.layout.layers=1",
                  "ldm.conditioning.layout.heads=2")


def task_model(config, mesh):
  """ldm.describe's model bound to a random first stage (the same on every mesh) with latent scale 0.7."""
  model = ldm.describe(config, None, mesh)
  size = config.data.image_size
  ae_params = model.autoencoder.init({"params": jax.random.key(7), "sample": jax.random.key(8)},
                                     jnp.zeros((1, size, size, 3)))["params"]
  return ldm.with_scale_factor(dataclasses.replace(model, params={"autoencoder": nn.unbox(ae_params)}), 0.7)


def trajectory(shape, examples, latents):
  config = tiny_config(f"mesh.shape={shape}", *TASK_OVERRIDES)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:int(np.prod(shape))])
  model = task_model(config, mesh)
  tx, state, shardings = ldm.init_state(config, model, mesh, jax.random.key(0))
  frozen, frozen_shardings = ldm.frozen_params(model, mesh, config.mesh)
  step = loop.compile_step(ldm.make_train_step(model, tx, 0.7, config.ldm.loop.ema_decay),
                           jax.random.key(1), shardings, mesh, config.mesh, (frozen_shardings,))
  batch_sharding = parallel.batch_sharding(mesh, config.mesh)
  losses = []
  for k, mean in enumerate(latents):
    prepared = [model.conditioning.prepare(e) for e in examples[8 * k:8 * k + 8]]
    batch = {name: np.stack([p[name] for p in prepared]) for name in model.conditioning.batch_fields()}
    batch.update(latent_mean=mean, latent_logvar=np.full_like(mean, -3.0))
    state, metrics = step(state, parallel.global_batch(batch, batch_sharding), frozen)
    losses.append(float(metrics["loss"]))
  kwargs = jax.eval_shape(model.conditioning.unet_kwargs, nn.unbox(model.conditioning.abstract_params()),
                          model.conditioning.example_inputs(1, model.latent_shape))
  return {"losses": losses, "concat_channels": kwargs["concat"].shape[-1], "context_width": kwargs["context"].shape[-1]}


def main():
  config = tiny_config(*TASK_OVERRIDES)
  shapes = data.make_dataset(config.data, "train")
  examples = [shapes[i] for i in range(24)]
  rng = np.random.default_rng(0)
  latents = [rng.normal(size=(8, 4, 4, 4)).astype(np.float32) for _ in range(3)]
  print(json.dumps({str(shape): trajectory(shape, examples, latents) for shape in [(1, 1, 1), (2, 2, 2)]}))


if __name__ == "__main__":
  sys.exit(main())
