"""The one place evaluation draws samples: the model's one Generator, data-parallel over the whole mesh.

Every process takes part: each call of the compiled sampler gets one global batch of condition inputs split
over the batch axes and draws x_T inside the compiled function, so XLA splits the whole sampler (noise, UNet
steps, decoder) over the devices. Global batch b uses the key fold_in(key(seed), b): sample i (class-major
order) is the same whatever the device or process count. The guidance scale is traced: one compile serves
every guidance setting.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from latent_diffusion import compiler, generation
from latent_diffusion.bundle import LatentDiffusion


@dataclasses.dataclass(eq=False)
class Sampler:
  """A model's generator at one guidance scale, with the sampler settings of config.sample."""
  generator: generation.Generator
  guidance_scale: float
  num_steps: int

  @functools.cache
  def sharded(self, sharding: NamedSharding, batch: int) -> Callable:
    """jit(params, cond_inputs, uncond_inputs, rng, guidance) -> images [batch, H, W, C], split like `sharding`
    (the batch size is given: an unconditional model's condition inputs are empty)."""
    sample = self.generator.sample_fn(num_steps=self.num_steps)
    shape = self.generator.latent_shape(None, None)

    def draw(params, cond, uncond, rng, guidance_scale):
      x_T = jax.random.normal(jax.random.fold_in(rng, 1), (batch, *shape), jax.numpy.float32)
      return sample(params, cond, uncond, x_T, rng, guidance_scale)

    return jax.jit(draw, out_shardings=sharding, compiler_options=compiler.jit_options())


def sampler(model: LatentDiffusion, config, guidance_scale: float | None = None) -> Sampler:
  """The Sampler of config.sample on `model` (guidance_scale None: config.sample.guidance_scale)."""
  scale = config.sample.guidance_scale if guidance_scale is None else guidance_scale
  return Sampler(generation.Generator(model), float(scale), config.sample.num_steps)


def replicated_key(mesh, seed: int, index: int) -> jax.Array:
  """fold_in(key(seed), index) as one key replicated over the mesh (identical on every process)."""
  data = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), index)))
  return jax.random.wrap_key_data(jax.make_array_from_callback(data.shape, NamedSharding(mesh, P()), lambda i: data[i]))


def generated_batches(sampler_: Sampler, labels: np.ndarray, batch_size: int, seed: int, mesh,
                      sharding: NamedSharding) -> Iterator[tuple[jax.Array, int]]:
  """(images [batch_size, H, W, C] sharded over the batch axes, number of real rows) per global batch of
  `labels` (the last batch padded by repeating its last label: one compile)."""
  generate = sampler_.sharded(sharding, batch_size)
  conditioning = sampler_.generator.model.conditioning
  to_global = lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  for b, start in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[start:start + batch_size]
    request = {"label": np.pad(chunk, (0, batch_size - len(chunk)), mode="edge").astype(np.int32)}
    cond = jax.tree.map(to_global, conditioning.request_inputs(request, batch_size))
    uncond = jax.tree.map(to_global, conditioning.null_request_inputs(request, batch_size))
    images = generate(sampler_.generator.model.params, cond, uncond, replicated_key(mesh, seed, b),
                      np.float32(sampler_.guidance_scale))
    yield images, len(chunk)
