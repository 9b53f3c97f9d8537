"""Run as a subprocess with 8 emulated CPU devices: a checkpoint hops across meshes (a pod slice
comes back smaller, then larger), each resumed run against an uninterrupted run on its new mesh.
Prints one JSON line: {case: {"resumed": [losses of the hop's steps], "uninterrupted": [the same
steps of the uninterrupted run], "restored_spec": str, "devices": int}}.
"""

import json
import os
import sys
import tempfile

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402

from latent_diffusion.training import loop  # noqa: E402
from tests.robustness import toy_stage  # noqa: E402

# The meshes one run hops across: (name, mesh shape (data, fsdp, tensor), devices), STEPS training steps on each.
HOPS = (("8 devices data=8", (8, 1, 1), 8), ("4 devices data=2 fsdp=2", (2, 2, 1), 4),
        ("8 devices data=2 fsdp=4", (2, 4, 1), 8))
STEPS = 4


def run(workdir: str, mesh_shape, devices, train_steps: int):
  config = toy_stage.toy_config(train_steps=train_steps, mesh_shape=mesh_shape, checkpoint_every_steps=STEPS)
  config.toy.optim.schedule = "constant"   # so that stopping after STEPS steps equals running STEPS steps
  state, _, history = loop.train_stage(toy_stage.toy_stage(config, workdir, devices=devices))
  return state, [h["loss"] for h in history]


def main():
  results = {}
  with tempfile.TemporaryDirectory() as root:
    for hop, (name, shape, count) in enumerate(HOPS):
      devices, train_steps = jax.devices()[:count], (hop + 1) * STEPS
      state, resumed = run(os.path.join(root, "hopping"), shape, devices, train_steps)
      if hop == 0:
        continue
      _, uninterrupted = run(os.path.join(root, f"uninterrupted {hop}"), shape, devices, train_steps)
      kernel = state.params["hidden"]["kernel"]
      results[f"{HOPS[hop - 1][0]} -> {name}"] = {
          "resumed": resumed, "uninterrupted": uninterrupted[hop * STEPS:],
          "restored_spec": str(kernel.sharding.spec), "devices": len(kernel.sharding.device_set)}
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
