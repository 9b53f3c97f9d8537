"""Helpers for the sharding tests: a tests module run on emulated CPU devices, and the stage-2 train step as
the training loop compiles it."""

import json
import os
import subprocess
import sys

import jax

from latent_diffusion import parallel
from latent_diffusion.training import ldm, loop


# XLA:CPU without LLVM's expensive optimisations: for runs that compare meshes with each other (all compiled
# alike), where a few steps of tiny models make the compiles most of the time.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run_on_emulated_devices(module: str, devices: int = 8, timeout: int = 900, fast_compile: bool = False) -> dict:
  """Runs `python -m module` with `devices` emulated CPU devices (compiled with FAST_COMPILE_FLAGS if
  `fast_compile`); returns the JSON of its last stdout line."""
  flags = f"--xla_force_host_platform_device_count={devices}" + (f" {FAST_COMPILE_FLAGS}" if fast_compile else "")
  env = dict(os.environ, XLA_FLAGS=flags)
  result = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def compiled_ldm_step(config, model, mesh):
  """(state, step, frozen, batch_sharding) for `model` on `mesh`: state from key 0, the step jitted by
  loop.compile_step with key 1 and latent scale 0.7. step(state, global_batch, frozen) -> (state, metrics)."""
  tx, state, shardings = ldm.init_state(config, model, mesh, jax.random.key(0))
  frozen, frozen_shardings = ldm.frozen_params(model, mesh, config.mesh)
  step = loop.compile_step(ldm.make_train_step(model, tx, 0.7, config.ldm.loop.ema_decay),
                           jax.random.key(1), shardings, mesh, config.mesh, (frozen_shardings,))
  return state, step, frozen, parallel.batch_sharding(mesh, config.mesh)
