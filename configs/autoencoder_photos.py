"""Stage 1 on real photos: an f=4 autoencoder on random 64x64 crops of the photos shipped with scikit-image and
scikit-learn (data.name='sample_photos'), validated on the tiles of two held-out photos. Minutes on 2 CPU cores.

  python -m latent_diffusion.cli.train --config=configs/autoencoder_photos.py:VARIANT --workdir=runs/photos_VARIANT
VARIANT: kl (L1 + KL), kl_gan (+ PatchGAN from disc_start), vq (L1 + codebook), vq_gan (+ PatchGAN).
The paper's LPIPS term needs local weights (nothing is downloaded):
  --config.autoencoder.loss.perceptual_weight=1.0 --config.autoencoder.lpips.vgg_path=vgg16-397923af.pth \
  --config.autoencoder.lpips.heads_path=.../lpips/weights/v0.1/vgg.pth
(with the paths alone, LPIPS is only reported as a validation metric).
"""

from latent_diffusion.configs import base

VARIANTS = ("kl", "kl_gan", "vq", "vq_gan")


def get_config(variant: str = "kl"):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r} of configs/autoencoder_photos.py; known: {VARIANTS}.")
  config = base.get_config()
  config.stages = ("autoencoder",)

  data = config.data
  data.name = "sample_photos"
  data.image_size = 64
  data.batch_size = 8
  data.flip = True

  ae = config.autoencoder
  ae.regularization = variant.split("_")[0]
  # f = 4 (64x64x3 <-> 16x16x3): the paper's KL-f4 / VQ-f4 latent shape, at a CPU-sized width.
  ae.model.update(in_channels=3, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=3, embed_dim=3, groups=8)
  # VQ-f4 with a CPU-sized codebook (a batch has 2048 latents); EMA updates and restarts keep it in use.
  ae.vq.update(num_embeddings=512, codebook_update="ema", dead_code_threshold=0.5)
  # The paper's loss: KL weight 1e-6, PatchGAN with the adaptive weight times 0.5, hinge loss, from disc_start
  # (here half-way); 2 stride-2 layers give 34x34-pixel patches on 64x64 crops (the paper: 3 on 256x256).
  ae.loss.disc_weight = 0.5 if variant.endswith("_gan") else 0.0
  ae.loss.disc_start = 250
  ae.discriminator.update(ch=32, num_layers=2)
  # Adam(0.5, 0.9) for both players as the paper, at a rate for a few hundred steps; constant after a short warmup.
  for optim in (ae.optim, ae.disc_optim):
    optim.update(lr=5e-4, warmup_steps=50, schedule="constant", grad_clip=0.0)
  # No EMA (as the paper's autoencoders): the figures are those of the trained weights after the GAN phase.
  ae.use_ema = False
  # 500 steps: a variant takes minutes on 2 CPU cores (the figures are of a short run, not a converged one).
  ae.loop.update(train_steps=500, log_every_steps=50, eval_every_steps=250, checkpoint_every_steps=250)
  ae.eval_examples = 512   # all 114 validation tiles
  return config
