"""Device meshes, logical-axis sharding rules, global batches and multi-host start-up."""

from latent_diffusion.parallel.distributed import initialize as initialize_distributed

from latent_diffusion.parallel.mesh import (batch_sharding, box_like, global_batch, make_mesh, place, replicated,
                                            state_shardings)
