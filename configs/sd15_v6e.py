"""SD-1.5 (configs/sd15.py) on a v6e-8 slice (8 chips, v6e 2x4): data parallel, 4 images per chip, no remat,
xla_probs attention -- the one v6e setup AOT-compiled at SD-1.5 size so far (benchmarks/README.md, issue 16): it
fits, 24.6 of 32 GiB HBM per chip at peak (arguments 12.9 GiB: parameters, EMA and AdamW moments replicated;
temporaries 11.8 GiB), 10.1 TFLOP per chip per step, 16 gradient all-reduces (1.65 GiB). XLA's TPU cost model gave
no time for this step (it answers -1), so there is no images/s estimate; by v6e's 918 TFLOP/s bf16 peak, a step
takes at least 11 ms. More images per chip need fsdp (state 1.6 GiB per chip on 8) or remat.
"""

from latent_diffusion.configs import sd15


def get_config():
  config = sd15.get_config()
  config.mesh.shape = (-1, 1, 1)           # parameters, EMA and AdamW replicated: 12.8 GiB per chip
  config.data.batch_size = 32              # 4 per chip on 8 chips
  config.ldm.model.remat_policy = "none"
  config.ldm.model.attention_impl = "xla_probs"
  return config
