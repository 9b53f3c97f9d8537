"""Run as a subprocess with 8 emulated CPU devices: a checkpoint written on one mesh resumes on a
smaller or larger one, against an uninterrupted run on the new mesh. Prints one JSON line:
{case: {"resumed": [losses of steps 5..8], "uninterrupted": [...], "restored_spec": str, "devices": int}}.
"""

import json
import os
import sys
import tempfile

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402

from latent_diffusion.training import loop  # noqa: E402
from tests.robustness import toy_stage  # noqa: E402

# case -> ((mesh, devices) written on, (mesh, devices) resumed on)
CASES = {"fsdp 4 -> 2": (((2, 4, 1), 8), ((2, 2, 1), 4)), "data 8 -> 4": (((8, 1, 1), 8), ((4, 1, 1), 4)),
         "fsdp 2 -> 4": (((2, 2, 1), 4), ((2, 4, 1), 8))}
HALF, STEPS = 4, 8


def run(workdir: str, mesh_shape, devices, train_steps: int):
  config = toy_stage.toy_config(train_steps=train_steps, mesh_shape=mesh_shape, checkpoint_every_steps=HALF)
  config.toy.optim.schedule = "constant"   # so that stopping at HALF of 8 steps equals running HALF steps
  state, _, history = loop.train_stage(toy_stage.toy_stage(config, workdir, devices=devices))
  return state, [h["loss"] for h in history]


def main():
  results = {}
  for case, ((before, before_devices), (after, after_devices)) in CASES.items():
    with tempfile.TemporaryDirectory() as resumed_dir, tempfile.TemporaryDirectory() as reference_dir:
      run(resumed_dir, before, jax.devices()[:before_devices], HALF)
      state, resumed = run(resumed_dir, after, jax.devices()[:after_devices], STEPS)
      _, uninterrupted = run(reference_dir, after, jax.devices()[:after_devices], STEPS)
    kernel = state.params["hidden"]["kernel"]
    results[case] = {"resumed": resumed, "uninterrupted": uninterrupted[HALF:],
                     "restored_spec": str(kernel.sharding.spec), "devices": len(kernel.sharding.device_set)}
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
