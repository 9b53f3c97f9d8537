"""The one place evaluation builds and calls the sampler (re-point it here when the generator API changes).

Samples are generated data-parallel over the whole mesh, every process included: each call of the compiled
generator takes one global batch of labels split over the batch axes. Global batch b draws its noise from
fold_in(key(seed), b), so sample i (class-major order) has a fixed seed whatever the device or process count.
"""

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from latent_diffusion import sampling
from latent_diffusion.training import autoencoder, ldm


@dataclasses.dataclass(eq=False)
class Generator:
  """generate(unet_params, ae_params, rng, labels [B]) -> images [B, H, W, C] in [0, 1], with its params."""
  generate: Callable
  unet_params: object
  ae_params: object

  @functools.cache
  def sharded(self, sharding: NamedSharding) -> Callable:
    """`generate` with its output split over the batch axes: XLA then splits the whole sampler (noise, UNet
    steps, decoder) that way. One compiled function per generator and sharding."""
    return jax.jit(self.generate, out_shardings=sharding)


def build_generate(config, unet, ae, scale_factor: float) -> Callable:
  """The compiled class-conditional sampler of config.sample for these modules."""
  return sampling.make_generate_fn(
      unet, ae, ldm.build_schedule(config), config.sample, ldm.latent_shape(config), scale_factor,
      config.ldm.diffusion.prediction_type, ldm.null_label(config))


@dataclasses.dataclass(eq=False)
class TrainedModels:
  """The modules and EMA params of a trained run (restoring them is the slow part: load once, sample often)."""
  unet: object
  unet_params: object
  ae: object
  ae_params: object
  scale_factor: float

  def generator(self, config) -> Generator:
    """The sampler of config.sample (e.g. another guidance scale) on these weights."""
    return Generator(build_generate(config, self.unet, self.ae, self.scale_factor), self.unet_params, self.ae_params)


def load_trained(config, workdir: pathlib.Path, mesh) -> TrainedModels:
  ae, ae_params = autoencoder.load_params(config, workdir, mesh)
  unet, unet_params, scale_factor = ldm.load_params(config, workdir, mesh)
  return TrainedModels(unet, unet_params, ae, ae_params, scale_factor)


def load_generator(config, workdir: pathlib.Path, mesh):
  """(generate, unet_params, ae_params): the compiled class-conditional sampler of a trained run."""
  generator = load_trained(config, workdir, mesh).generator(config)
  return generator.generate, generator.unet_params, generator.ae_params


def with_guidance(config, guidance_scale: float | None):
  """config, or a copy whose config.sample.guidance_scale is `guidance_scale` (None: unchanged)."""
  if guidance_scale is None:
    return config
  config = config.copy_and_resolve_references()
  config.sample.guidance_scale = guidance_scale
  return config


def replicated_key(mesh, seed: int, index: int) -> jax.Array:
  """fold_in(key(seed), index) as one key replicated over the mesh (identical on every process)."""
  data = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), index)))
  return jax.random.wrap_key_data(jax.make_array_from_callback(data.shape, NamedSharding(mesh, P()), lambda i: data[i]))


def generated_batches(generator: Generator, labels: np.ndarray, batch_size: int, seed: int, mesh,
                      sharding: NamedSharding) -> Iterator[tuple[jax.Array, int]]:
  """(images [batch_size, H, W, C] sharded over the batch axes, number of real rows) per global batch of
  `labels` (the last batch padded by repeating its last label: one compile)."""
  generate = generator.sharded(sharding)
  for b, start in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[start:start + batch_size]
    padded = np.pad(chunk, (0, batch_size - len(chunk)), mode="edge").astype(np.int32)
    global_labels = jax.make_array_from_callback(padded.shape, sharding, lambda i: padded[i])
    images = generate(generator.unet_params, generator.ae_params, replicated_key(mesh, seed, b),
                                global_labels)
    yield images, len(chunk)
