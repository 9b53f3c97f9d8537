"""Device meshes, logical-axis sharding rules and global batches."""

from latent_diffusion.parallel.mesh import (batch_sharding, global_batch, make_mesh, replicated,
                                            state_shardings)
