"""SD-1.5 (configs/sd15.py) on a v5p-8 slice (4 chips, v5p 2x2x1): data parallel, 8 images per chip, no remat,
XLA attention -- the one SD-size setup AOT-compiled so far (benchmarks/README.md): 50.7 of 95 GiB HBM per chip
at peak, XLA cost model 0.171 s / step = 46.8 images/s/chip (an estimate, not a measured step time).
"""

from latent_diffusion.configs import sd15


def get_config():
  config = sd15.get_config()
  config.mesh.shape = (-1, 1, 1)           # parameters, EMA and AdamW replicated: 12.8 GiB per chip
  config.data.batch_size = 32              # 8 per chip on 4 chips
  config.ldm.model.remat_policy = "none"
  config.ldm.model.attention_impl = "xla"
  return config
