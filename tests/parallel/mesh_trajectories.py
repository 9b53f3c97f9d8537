"""Run as a subprocess with 8 emulated CPU devices: 5 stage-2 train steps on several meshes.

Prints one JSON line: {mesh shape: {"losses": [...], "device0_bytes": int, "total_bytes": int}}.
"""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from latent_diffusion import parallel  # noqa: E402
from latent_diffusion.training import ldm, loop  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]


def state_bytes(state, device) -> tuple[int, int]:
  """(bytes of params + optimizer state held by `device`, bytes of the whole arrays)."""
  leaves = jax.tree.leaves((state.params, state.opt_state))
  on_device = sum(s.data.nbytes for leaf in leaves for s in leaf.addressable_shards if s.device == device)
  return on_device, sum(leaf.nbytes for leaf in leaves)


def trajectory(shape, batches):
  config = tiny_config(f"mesh.shape={shape}", "ldm.model.model_channels=32", "ldm.model.num_head_channels=16")
  devices = jax.devices()[:int(np.prod(shape))]
  mesh = parallel.make_mesh(config.mesh, devices)
  model = ldm.describe(config, None, mesh)
  tx, state, shardings = ldm.init_state(config, model, mesh, jax.random.key(0))
  frozen, frozen_shardings = ldm.frozen_params(model, mesh, config.mesh)
  step = loop.compile_step(ldm.make_train_step(model, tx, 0.7, config.ldm.loop.ema_decay),
                           jax.random.key(1), shardings, mesh, config.mesh, (frozen_shardings,))
  batch_sharding = parallel.batch_sharding(mesh, config.mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.global_batch(batch, batch_sharding), frozen)
    losses.append(float(metrics["loss"]))
  on_device, total = state_bytes(state, devices[0])
  return {"losses": losses, "device0_bytes": on_device, "total_bytes": total}


def main():
  config = tiny_config()
  h, w, c = ldm.describe(config, None, parallel.make_mesh(config.mesh)).latent_shape
  rng = np.random.default_rng(0)
  batches = [{"latent_mean": rng.normal(size=(16, h, w, c)).astype(np.float32),
              "latent_logvar": np.full((16, h, w, c), -3.0, np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(5)]
  results = {str(shape): trajectory(shape, batches) for shape in MESHES}
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
