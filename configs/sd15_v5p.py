"""SD-1.5 (configs/sd15.py) on a v5p-8 slice (4 chips, v5p 2x2x1): data parallel, 16 images per chip, no remat,
splash attention -- the best of the SD-size setups AOT-compiled for v5p-8 so far (benchmarks/README.md, issue 16):
33.2 of 95 GiB HBM per chip at peak, XLA cost model 0.169 s / step = 94.9 images/s/chip (main's code, bcd1fec; an
estimate, not a measured step time; the cost model does not count the Pallas kernel's FLOPs: ~82 images/s/chip with
them at half of peak). With attention_impl='xla_probs' (TPU's auto) the same step compiles to 51.0 GiB and 71.8
images/s/chip by the same model, with 'xla' (jax.nn's float32 scores, older code e15ee60) to 88.4 GiB and 53.2. With
every FLOP counted the best v5p-8 compile is configs/sd15_v5p_fsdp.py (fsdp 4, xla_probs: 75.4).
"""

from latent_diffusion.configs import sd15


def get_config():
  # Parameters, EMA and AdamW replicated (12.8 GiB per chip); 16 images per chip on 4 chips.
  return sd15.slice_config(mesh_shape=(-1, 1, 1), batch_size=64, attention_impl="splash")
