"""One process of a local multi-host run (gloo CPU collectives): 5 stage-2 steps, then a param digest.

  python -m tests.parallel.multihost_worker COORDINATOR NUM_PROCESSES PROCESS_ID OUT.npz

Each process feeds only its own slice of every global batch; process 0 writes the final params.
With NUM_PROCESSES=1 it is the single-process reference on all local devices.
"""

import sys

import jax

from latent_diffusion import parallel


def main(coordinator: str, num_processes: int, process_id: int, out: str):
  if num_processes > 1:
    parallel.initialize_distributed(coordinator, num_processes, process_id)
  import numpy as np

  from latent_diffusion.training import ldm
  from tests.conftest import tiny_config
  from tests.parallel.emulated import compiled_ldm_step

  # The same (2, 2, 1) mesh either way; across processes 'data' runs over the DCN axis, so each
  # process holds one row: FSDP gathers stay inside a host.
  mesh_shape = ("mesh.shape=(1, 2, 1)", "mesh.dcn_shape=(2, 1, 1)") if num_processes > 1 else ("mesh.shape=(2, 2, 1)",)
  config = tiny_config(*mesh_shape, "ldm.model.model_channels=32", "ldm.model.num_head_channels=16")
  mesh = parallel.make_mesh(config.mesh)
  assert mesh.devices.shape == (2, 2, 1)
  if num_processes > 1:
    assert [{d.process_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]
  model = ldm.describe(config, None, mesh)
  state, step, frozen, batch_sharding = compiled_ldm_step(config, model, mesh)
  h, w, c = model.latent_shape
  rng = np.random.default_rng(0)
  share = 16 // jax.process_count()
  losses = []
  for _ in range(5):
    batch = {"latent_mean": rng.normal(size=(16, h, w, c)).astype(np.float32),
             "latent_logvar": np.full((16, h, w, c), -3.0, np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    local = {k: v[jax.process_index() * share:(jax.process_index() + 1) * share] for k, v in batch.items()}
    state, metrics = step(state, parallel.global_batch(local, batch_sharding), frozen)
    losses.append(float(metrics["loss"]))
  gather = jax.jit(lambda p: p, out_shardings=parallel.replicated(mesh))
  params = jax.tree.map(np.asarray, gather(state.params))
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, losses=np.array(losses), **flat)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
