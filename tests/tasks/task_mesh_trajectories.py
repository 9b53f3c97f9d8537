"""Run as a subprocess with 8 emulated CPU devices: 3 stage-2 train steps of a model conditioned on every task
conditioner at once (inpainting: masks drawn on device, half of them over part of an object's box, + the frozen
first-stage encoder in the step; super-resolution: low-resolution images with per-step noise; semantic maps;
layouts through the jointly trained transformer and as a box map), on a (1, 1, 1) and a (2, 2, 2) mesh, from the
same initial state (initialised once, by ldm.init_state on one device, then placed by the (2, 2, 2) mesh's state
shardings: one init compile instead of two).

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
from latent_diffusion.training.state import abstract_train_state  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

KINDS = ("inpaint", "low_res", "segmentation", "layout")
TASK_OVERRIDES = ("data.name=shapes", "data.image_size=16", "data.num_classes=12", "data.batch_size=8",
                  "autoencoder.model.in_channels=3", f"ldm.conditioning.kinds={KINDS}",
                  "ldm.conditioning.drop_prob=0.25", "ldm.conditioning.low_res.noise_std=0.1",
                  "ldm.conditioning.inpaint.masks.object_prob=0.5",
                  "ldm.conditioning.layout.width=16", "ldm.conditioning.layout.layers=1",
                  "ldm.conditioning.layout.heads=2", "ldm.conditioning.layout.box_map=True")


def first_stage_params(config):
  """Random first-stage parameters (the same on every mesh), initialised under jit: building the model and its
  autoencoder's parameters eagerly, op by op, took 23 s of this test's 150 s on one core."""
  model = ldm.describe(config, None, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  size = config.data.image_size
  init = jax.jit(model.autoencoder.init)
  return nn.unbox(init({"params": jax.random.key(7), "sample": jax.random.key(8)}, jnp.zeros((1, size, size, 3))))[
      "params"]


def trajectory(shape, examples, latents, ae_params, initial_state=None):
  """(losses etc., the initial state on the host): ldm.init_state's state, or initial_state placed on the mesh."""
  config = tiny_config(f"mesh.shape={shape}", *TASK_OVERRIDES)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:int(np.prod(shape))])
  model = ldm.with_scale_factor(dataclasses.replace(ldm.describe(config, None, mesh), params={"autoencoder": ae_params}),
                                0.7)
  if initial_state is None:
    tx, state, shardings = ldm.init_state(config, model, mesh, jax.random.key(0))
    initial_state = jax.device_get(state)
  else:
    tx = ldm.make_optimizer(config.ldm.optim, config.ldm.loop.train_steps)
    _, shardings = abstract_train_state(ldm.trainable_init_fn(model), tx, mesh, config.mesh)
    state = jax.device_put(initial_state, shardings)
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
  return {"losses": losses, "concat_channels": kwargs["concat"].shape[-1],
          "context_width": kwargs["context"].shape[-1]}, initial_state


def main():
  config = tiny_config(*TASK_OVERRIDES)
  shapes = data.make_dataset(config.data, "train")
  examples = [shapes[i] for i in range(24)]
  rng = np.random.default_rng(0)
  latents = [rng.normal(size=(8, 4, 4, 4)).astype(np.float32) for _ in range(3)]
  ae_params = first_stage_params(config)
  one, initial_state = trajectory((1, 1, 1), examples, latents, ae_params)
  mesh, _ = trajectory((2, 2, 2), examples, latents, ae_params, initial_state)
  print(json.dumps({"(1, 1, 1)": one, "(2, 2, 2)": mesh}))


if __name__ == "__main__":
  sys.exit(main())
