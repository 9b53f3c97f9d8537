"""Untrained bundles of any config, for tests of sampling (shapes, sizes, what the sampler keeps): the modules of
ldm.describe with random parameters, the first stage bound with latent scale 0.8."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_diffusion import conditioning, data, parallel
from latent_diffusion.bundle import LatentDiffusion
from latent_diffusion.training import ldm


def random_bundle(config, seed: int = 0) -> LatentDiffusion:
  model = ldm.describe(config, None, parallel.make_mesh(config.mesh))
  height, width = data.image_shape(config.data)
  image = jnp.zeros((1, height, width, model.autoencoder.in_channels))
  ae_params = nn.unbox(model.autoencoder.init({"params": jax.random.key(seed), "sample": jax.random.key(seed)},
                                              image)["params"])
  model = ldm.with_scale_factor(dataclasses.replace(model, params={"autoencoder": ae_params}), 0.8)
  trainable = nn.unbox(ldm.trainable_init_fn(model)(jax.random.key(seed + 1)))
  frozen = nn.unbox(model.conditioning.frozen_params())
  return dataclasses.replace(model, params={
      "unet": trainable["unet"], "autoencoder": ae_params,
      "conditioner": conditioning.merge_params(trainable.get("conditioner", {}), frozen)})
