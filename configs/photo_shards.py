"""Your photos in webdataset tars -> stage 1 -> pre-encoded latents -> unconditional stage 2 -> samples.

The README's "Data at scale" journey (run from the repository root):
  python -m latent_diffusion.cli.train --config=configs/photo_shards.py --workdir=runs/photos \
      --config.stages="('autoencoder',)" --config.data.train_path='shards/{00000..00002}.tar' \
      --config.data.val_path='shards/00003.tar'
  python -m latent_diffusion.cli.encode --config=configs/photo_shards.py --autoencoder=runs/photos \
      --input='shards/{00000..00002}.tar' --output=latents/
  python -m latent_diffusion.cli.train --config=configs/photo_shards.py --workdir=runs/photos_ldm \
      --config.stages="('ldm',)" --config.ldm.latents_path=latents/ --config.ldm.autoencoder_workdir=runs/photos
  python -m latent_diffusion.cli.sample --workdir=runs/photos_ldm --num_images=16
`configs/photo_shards.py:tiny` is the same at seconds-long sizes (the CI version of the journey).
"""

from latent_diffusion.configs import base, tiny

SIZES = ("full", "tiny")


def get_config(size: str = "full"):
  if size not in SIZES:
    raise ValueError(f"Unknown size {size!r} of configs/photo_shards.py; known: {SIZES}.")
  config = base.get_config()
  config.stages = ("autoencoder", "ldm")

  data = config.data
  data.name = "tar_shards"
  # 32 x 32 centre crops of the shorter side, flipped at random in stage 1 (the encode job never flips).
  data.image_size = 32
  data.batch_size = 32
  data.flip = True

  ae = config.autoencoder
  # f = 4, RGB: 32x32x3 images <-> 8x8x4 latents.
  ae.model.update(in_channels=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, groups=8)
  ae.optim.update(lr=1e-3, b1=0.9, b2=0.999, warmup_steps=100)
  ae.loop.update(train_steps=2000, eval_every_steps=1000)
  ae.eval_examples = 256

  ldm = config.ldm
  # Tars rarely carry class labels: unconditional (a class-conditional model needs a label in every record).
  ldm.conditioning.kinds = ()
  ldm.model.update(model_channels=64, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(2,),
                   num_head_channels=32, groups=16)
  ldm.optim.update(lr=1e-3, warmup_steps=200)
  ldm.loop.update(train_steps=5000, ema_decay=0.995)

  # The digits judges do not apply to photos: during training only a grid of samples (to TensorBoard and
  # samples.png), and the evaluate stage is not run.
  config.evaluate.during_training = ("sample_grid",)
  config.evaluate.training_samples_per_class = config.evaluate.grid_columns   # one row of the grid per "class"
  ldm.loop.eval_every_steps = 1000
  config.sample.guidance_scale = 1.0
  if size == "tiny":
    tiny.shrink(config, steps=6, every=3, warmup=2)
    data.image_size, data.batch_size = 16, 8
    ldm.model.update(channel_mult=(1,), attention_resolutions=(1,))
    ae.eval_examples = 8
    ldm.loop.eval_every_steps = 6
    config.evaluate.update(grid_columns=2, training_samples_per_class=2)
    config.encode.update(batch_size=8, records_per_shard=8)
    config.sample.num_steps = 4
  return config
