"""SD-1.5 (configs/sd15.py) on a v5p-8 slice (4 chips, v5p 2x2x1): fsdp 4, 16 images per chip, no remat,
xla_probs attention -- the best v5p-8 setup AOT-compiled with every FLOP counted (benchmarks/README.md, issue 16):
43.9 of 95 GiB HBM per chip at peak (parameters, EMA and AdamW moments sharded: 3.2 GiB per chip), XLA's cost model
0.212 s / step = 75.4 images/s/chip vs 71.8 data parallel (estimates, not measured step times; the cost model
charges the weights' all-gathers like on-chip passes, so the real gain may be ~3 %, README). configs/sd15_v5p.py
(splash, data parallel) ranks higher by the cost model, which does not count the splash kernel's FLOPs.
"""

from latent_diffusion.configs import sd15


def get_config():
  # fsdp over the slice's chips (state 3.2 GiB per chip on 4); 16 images per chip on 4 chips.
  return sd15.slice_config(mesh_shape=(1, -1, 1), batch_size=64, attention_impl="xla_probs")
