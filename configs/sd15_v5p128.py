"""SD-1.5 (configs/sd15.py) on a v5p-128 slice (64 chips, v5p 4x4x4): data parallel, 16 images per chip, no remat,
xla_probs attention, as AOT-compiled (benchmarks/README.md, issue 16): 51.0 of 95 GiB HBM per chip at peak, XLA's
cost model 0.223 s / step = 71.8 images/s/chip, the same per-chip program as on v5p-8 (an estimate, not a measured
step time: the cost model charges the 1.65 GiB gradient all-reduce like an on-chip pass whatever the chip count, so it
says nothing about scaling; by arithmetic the all-reduce needs >= 5.8 ms of ICI per step at 64 chips).
"""

from latent_diffusion.configs import sd15


def get_config():
  # Parameters, EMA and AdamW replicated (12.8 GiB per chip); 16 images per chip on 64 chips.
  return sd15.slice_config(mesh_shape=(-1, 1, 1), batch_size=1024, attention_impl="xla_probs")
