"""SD-1.5 (configs/sd15.py) on a v6e-256 slice (256 chips, v6e 16x16): data 32 x fsdp 8, 8 images per chip, no remat,
xla_probs attention -- configs/sd15_v6e.py's v6e-8 setup repeated over 32 data groups, as AOT-compiled
(benchmarks/README.md, issue 16): 20.3 of 32 GiB HBM per chip at peak (state 1.6 GiB), 18.1 TFLOP per step per chip.
XLA's TPU cost model gives no time for it (it answers -1 for SD-size v6e steps). fsdp 8 does not divide the 16 x 16
torus's axes: parallel.make_mesh splits one, so that each fsdp group is 8 neighbours on a ring.
"""

from latent_diffusion.configs import sd15


def get_config():
  # Parameters, EMA and AdamW sharded over 8 chips (1.6 GiB per chip), replicated over 32 groups; 8 images per chip.
  return sd15.slice_config(mesh_shape=(-1, 8, 1), batch_size=2048, attention_impl="xla_probs")
