"""Device meshes, logical-axis sharding rules, global batches and multi-host start-up."""

from latent_diffusion.parallel.distributed import initialize as initialize_distributed

from latent_diffusion.parallel.mesh import (batch_sharding, global_batch, make_mesh, replicated,
                                            state_shardings)
