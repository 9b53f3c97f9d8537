"""Image sets that evaluators compare, streamed as global batches split over the mesh (all processes).

A source is named in config.evaluate.sources and has a kind:
  generated       the model's samples, `samples_per_class` per class (class-major), guidance_scale from
                  config.sample unless set; `collapsed=True` draws one sample per class and repeats it (the
                  sensitivity check a mode-collapsed generator must fail).
  split           real images of config.data's `split` (train / val), `max_examples` of them (0 = all; a
                  fixed uniform subset otherwise). Each process reads only the rows its devices hold.
  reconstruction  a split's images through the trained autoencoder (encode -> posterior mode -> decode), with
                  the originals as `reference` (PSNR & co., rFID).
Every image is float32 [H, W, C] in [0, 1].
"""

import dataclasses
from collections.abc import Callable, Iterator

import jax
import numpy as np

from latent_diffusion import data
from latent_diffusion.evaluation import generation
from latent_diffusion.models import AutoencoderKL


@dataclasses.dataclass
class Batch:
  """One global batch. Rows [0, valid) are samples, the rest padding (repeats of the last sample)."""
  images: jax.Array                   # [B, H, W, C] in [0, 1], split over the batch axes
  indices: np.ndarray                 # [B] sample index within the source
  valid: int
  labels: np.ndarray | None = None    # [B] classes (generated sources), identical on every process
  reference: jax.Array | None = None  # [B, H, W, C] originals of reconstructed images


@dataclasses.dataclass
class Source:
  name: str
  size: int
  batches: Callable[[], Iterator[Batch]]


def _padded_indices(start: int, valid: int, batch_size: int) -> np.ndarray:
  return np.minimum(np.arange(start, start + batch_size), start + valid - 1)


def _read_rows(rows: Callable[[np.ndarray], np.ndarray], order: np.ndarray, batch_size: int, sharding,
               shape: tuple[int, ...]) -> Iterator[tuple[jax.Array, np.ndarray, int]]:
  """(global images, sample indices, valid) per batch; `rows(example ids)` is called only for this process's rows."""
  for start in range(0, len(order), batch_size):
    valid = min(batch_size, len(order) - start)
    indices = _padded_indices(start, valid, batch_size)
    images = jax.make_array_from_callback((batch_size, *shape), sharding,
                                          lambda index, ids=order[indices]: rows(ids[index[0]]))
    yield images, indices, valid


def split_order(size: int, max_examples: int, seed: int) -> np.ndarray:
  """Example ids of a split to evaluate: all, or a fixed uniform subset of max_examples, in index order."""
  if max_examples <= 0 or max_examples >= size:
    return np.arange(size)
  return np.sort(np.random.default_rng(seed).choice(size, max_examples, replace=False))


def _split(cfg, ctx, name: str) -> Source:
  dataset = data.make_dataset(ctx.config.data, cfg.split)
  order = split_order(len(dataset), cfg.max_examples, ctx.config.evaluate.seed)
  rows = lambda ids: np.stack([(np.asarray(dataset[int(i)]["image"], np.float32) + 1.0) / 2.0 for i in ids])
  shape = rows(order[:1]).shape[1:]

  def batches():
    for images, indices, valid in _read_rows(rows, order, ctx.batch_size, ctx.sharding, shape):
      yield Batch(images, indices, valid)
  return Source(name, len(order), batches)


def _reconstruction(cfg, ctx, name: str) -> Source:
  split = _split(cfg, ctx, name)
  ae, ae_params = ctx.autoencoder()

  def reconstruct(params, images):
    posterior = ae.apply({"params": params}, images * 2.0 - 1.0, method=AutoencoderKL.encode)
    decoded = ae.apply({"params": params}, posterior.mode(), method=AutoencoderKL.decode)
    return jax.numpy.clip((decoded + 1.0) / 2.0, 0.0, 1.0)
  reconstruct = jax.jit(reconstruct, out_shardings=ctx.sharding)

  def batches():
    for batch in split.batches():
      yield dataclasses.replace(batch, images=reconstruct(ae_params, batch.images), reference=batch.images)
  return Source(name, split.size, batches)


def _generated(cfg, ctx, name: str) -> Source:
  classes, per_class = ctx.config.data.num_classes, ctx.samples_per_class
  labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
  generator = ctx.generator(cfg.guidance_scale)
  seed = ctx.config.evaluate.seed
  if not cfg.collapsed:
    def batches():
      stream = generation.generated_batches(generator, labels, ctx.batch_size, seed, ctx.mesh, ctx.sharding)
      for start, (images, valid) in zip(range(0, len(labels), ctx.batch_size), stream):
        indices = _padded_indices(start, valid, ctx.batch_size)
        yield Batch(images, indices, valid, labels[indices])
    return Source(name, len(labels), batches)

  def collapsed_batches():
    per_class = generation.generated_batches(generator, np.arange(classes, dtype=np.int32), ctx.batch_size, seed,
                                             ctx.mesh, ctx.sharding)
    one_per_class = np.concatenate([ctx.to_host(images)[:valid] for images, valid in per_class])  # [classes, ...]
    rows = lambda ids: one_per_class[labels[ids]]
    for images, indices, valid in _read_rows(rows, np.arange(len(labels)), ctx.batch_size, ctx.sharding,
                                             one_per_class.shape[1:]):
      yield Batch(images, indices, valid, labels[indices])
  return Source(name, len(labels), collapsed_batches)


# Source kind -> fn(its config.evaluate.sources entry, EvalContext, source name) -> Source.
SOURCE_KINDS = {"generated": _generated, "split": _split, "reconstruction": _reconstruction}


def make_source(name: str, ctx) -> Source:
  sources = ctx.config.evaluate.sources
  if name not in sources:
    raise ValueError(f"Unknown evaluation source {name!r}; config.evaluate.sources has {sorted(sources)}.")
  cfg = sources[name]
  if cfg.kind not in SOURCE_KINDS:
    raise ValueError(f"config.evaluate.sources.{name}.kind={cfg.kind!r}; known: {sorted(SOURCE_KINDS)}.")
  return SOURCE_KINDS[cfg.kind](cfg, ctx, name)
