"""Run as a subprocess with 8 emulated CPU devices: 3 stage-1 steps (VQ + LPIPS + PatchGAN, both optimizers) on a
(1,1,1) and a (2,2,2) mesh.

  python -m tests.training.stage1_mesh_trajectories VGG16_FILE LPIPS_HEADS_FILE
Prints one JSON line: {mesh shape: {"metrics": [{name: value} per step], "params": checksums of the final state}}.
"""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from latent_diffusion import parallel  # noqa: E402
from latent_diffusion.models.lpips import load_lpips_params  # noqa: E402
from latent_diffusion.training import autoencoder, loop  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

MESHES = [(1, 1, 1), (2, 2, 2)]


def trajectory(shape, batches, vgg_path: str, heads_path: str) -> dict:
  config = tiny_config(f"mesh.shape={shape}", "autoencoder.regularization=vq", "autoencoder.vq.num_embeddings=16",
                       "autoencoder.vq.codebook_update=ema", "autoencoder.vq.dead_code_threshold=0.99",
                       "autoencoder.loss.disc_weight=0.5", "autoencoder.loss.disc_start=1",
                       "autoencoder.loss.perceptual_weight=1.0", "autoencoder.discriminator.num_layers=2",
                       "autoencoder.discriminator.ch=8", "autoencoder.optim.warmup_steps=0", "data.batch_size=8")
  devices = jax.devices()[:int(np.prod(shape))]
  mesh = parallel.make_mesh(config.mesh, devices)
  stage1, state, shardings = autoencoder.init_state(config, mesh, jax.random.key(0))
  step = loop.compile_step(autoencoder.make_train_step(stage1), jax.random.key(1), shardings, mesh, config.mesh,
                           {"lpips": load_lpips_params(vgg_path, heads_path)})
  batch_sharding = parallel.batch_sharding(mesh, config.mesh)
  metrics = []
  for batch in batches:
    state, step_metrics = step(state, parallel.global_batch(batch, batch_sharding))
    metrics.append({k: float(v) for k, v in step_metrics.items()})
  leaves = jax.tree.leaves(jax.device_get((state.params, state.disc_params, state.codebook_stats)))
  return {"metrics": metrics, "params": [float(np.sum(np.abs(leaf))) for leaf in leaves]}


def main():
  vgg_path, heads_path = sys.argv[1:3]
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)} for _ in range(3)]
  print(json.dumps({str(shape): trajectory(shape, batches, vgg_path, heads_path) for shape in MESHES}))


if __name__ == "__main__":
  sys.exit(main())
