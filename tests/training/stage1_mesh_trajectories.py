"""Run as a subprocess with 8 emulated CPU devices: 3 stage-1 steps (VQ with EMA codebook and restarts + PatchGAN,
both optimizers) from the same initial state on a (1,1,1) and a (2,2,2) mesh.

  python -m tests.training.stage1_mesh_trajectories
Prints one JSON line: {mesh shape: {"metrics": [{name: value} per step], "sums": {path: sum |leaf|} of the final
discriminator and codebook statistics}}.
"""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from latent_diffusion import parallel  # noqa: E402
from latent_diffusion.training import autoencoder, codebook, loop  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402
from tests.models.conftest import _random_params  # noqa: E402

MESHES = [(1, 1, 1), (2, 2, 2)]


def config_for(shape):
  return tiny_config(f"mesh.shape={shape}", "autoencoder.regularization=vq", "autoencoder.vq.num_embeddings=16",
                     "autoencoder.vq.codebook_update=ema", "autoencoder.vq.dead_code_threshold=0.99",
                     "autoencoder.loss.disc_weight=0.5", "autoencoder.loss.disc_start=1",
                     "autoencoder.discriminator.num_layers=2", "autoencoder.discriminator.ch=8",
                     "autoencoder.optim.warmup_steps=0", "data.batch_size=8")


def trajectory(shape, initial, batches) -> dict:
  """3 steps on `shape` from `initial` (resharded: initialising once keeps this test cheap)."""
  config = config_for(shape)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:int(np.prod(shape))])
  stage1, template = autoencoder.abstract_state(config, mesh)
  shardings = jax.tree.map(lambda leaf: leaf.sharding, template)
  state = jax.device_put(initial, shardings)
  step = loop.compile_step(autoencoder.make_train_step(stage1), jax.random.key(1), shardings, mesh, config.mesh,
                           (parallel.replicated(mesh),))
  batch_sharding = parallel.batch_sharding(mesh, config.mesh)
  metrics = []
  for batch in batches:
    state, step_metrics = step(state, parallel.global_batch(batch, batch_sharding), {"lpips": None})
    metrics.append({k: float(v) for k, v in step_metrics.items()})
  # Sums of the discriminator and the codebook statistics (the autoencoder shows in the metrics; some of its
  # parameters, e.g. attention key biases, have gradients that are zero up to rounding, which Adam amplifies).
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get((state.disc_params, state.codebook_stats)))
  sums = {jax.tree_util.keystr(path): float(np.sum(np.abs(leaf))) for path, leaf in leaves}
  return {"metrics": metrics, "sums": sums}


def initial_state(config):
  """A fresh state filled from numpy (a jitted random init would dominate this test's compile time)."""
  stage1, template = autoencoder.abstract_state(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  params = _random_params(stage1.model, np.zeros((1, 16, 16, 1), np.float32))["params"]
  disc_params = _random_params(stage1.discriminator, np.zeros((1, 16, 16, 1), np.float32), seed=1)["params"]
  logvar = np.zeros((), np.float32)
  state = template.replace(
      step=np.zeros((), np.int32), params=params, ema_params=params, opt_state=stage1.tx.init((params, logvar)),
      logvar=logvar, disc_params=disc_params, disc_opt_state=stage1.disc_tx.init(disc_params),
      codebook_stats=codebook.init_stats(params["quantize"]["embedding"]))
  return jax.device_get(state)


def main():
  initial = initial_state(config_for((1, 1, 1)))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)} for _ in range(3)]
  print(json.dumps({str(shape): trajectory(shape, initial, batches) for shape in MESHES}))


if __name__ == "__main__":
  sys.exit(main())
