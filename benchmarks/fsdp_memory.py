"""Per-device memory of our train step under fsdp = 1, 2, 4, 8 on emulated CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/fsdp_memory.py [--size=cpu-small]

(run.py sets XLA_FLAGS.) For each mesh (data=1, fsdp=N, tensor=1) with the project's sharding rules
(configs/base.py): bytes of params + AdamW state held by device 0, and the compiled step's
per-device memory analysis (arguments, temporaries, peak). The global batch stays the size's.
"""

import os
import pathlib
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems"), str(HERE.parent)]

import timing  # noqa: E402
import jax_workloads  # noqa: E402
import ours  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from latent_diffusion import configuration, parallel  # noqa: E402


def per_device(setup: ours.Setup, fsdp: int, mesh_config) -> dict:
  mesh_config.shape = (1, fsdp, 1)
  devices = jax.devices()[:fsdp]
  mesh = parallel.make_mesh(mesh_config, devices)
  latents, context = setup.latents, setup.context

  def init(rng):
    params = setup.unet.init(rng, latents[:1], jnp.zeros((1,), jnp.int32), context=context[:1])["params"]
    return params, setup.tx.init(params)

  rng = jax.random.key(0)
  shardings = parallel.state_shardings(init, mesh, mesh_config, rng)
  state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
  batch = parallel.batch_sharding(mesh, mesh_config)
  step = jax.jit(setup.train_step().__wrapped__, donate_argnums=0,
                 in_shardings=(shardings, batch, batch, parallel.replicated(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)))
  compiled = step.lower(state, latents, context, jax.random.key(1)).compile()
  held = sum(s.data.nbytes for leaf in jax.tree.leaves(state) for s in leaf.addressable_shards
             if s.device == devices[0])
  return {"state_bytes_device0": held, **jax_workloads.compiled_stats(compiled)}


def main():
  args = timing.parse_args(__doc__.splitlines()[0], ["--workload=memory", *sys.argv[1:]])
  config, _ = configuration.parse_config_args([f"--config={HERE.parent / 'configs' / 'base.py'}"])
  setup = ours.Setup(args.size)
  timing.emit({str(n): per_device(setup, n, config.mesh) for n in (1, 2, 4, 8)})


if __name__ == "__main__":
  main()
