"""SD-1.5 (configs/sd15.py) on a v6e-8 slice (8 chips, v6e 2x4): fsdp 8, 8 images per chip, no remat, xla_probs
attention -- of the two v6e setups AOT-compiled at SD-1.5 size (benchmarks/README.md, issue 16), the one holding
more images per chip: 22.5 of 32 GiB HBM per chip at peak (parameters, EMA and AdamW moments sharded: 1.6 GiB per
chip; temporaries 20.9 GiB). Data parallel fits only 4 per chip (24.6 GiB: the replicated state alone is 12.9).
XLA's TPU cost model gives no time for either step (it answers -1), so which runs faster per chip is not known here;
as on v5p 2x2x2, fsdp 8 compiles to looped collective matmuls (1,830 collective-permutes, 383 all-gathers).
"""

from latent_diffusion.configs import sd15


def get_config():
  # fsdp over the slice's chips (state 1.6 GiB per chip on 8); 8 images per chip on 8 chips.
  return sd15.slice_config(mesh_shape=(1, -1, 1), batch_size=64, attention_impl="xla_probs")
