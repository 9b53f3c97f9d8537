"""Networks that turn a batch of images into per-sample outputs, by name (what evaluators request).

  inception     pool3 [2048] and logits_unbiased [1008] of the FID InceptionV3 (config.evaluate.inception:
                weights file, resize convention).
  digits_cnn    features [width] (penultimate layer) and logits of a digits CNN trained here on the real
                training split (config.evaluate.digits_cnn); info: its validation accuracy.
  svm_judge     correct [0/1]: the digits SVM's prediction equals the conditioning label; info: its
                validation accuracy.
  clip          score: CLIP score 100 * max(cos(image, prompt), 0) against the class prompt (config.evaluate.clip).
  reconstruction  one value per metric of config.evaluate.reconstruction.metrics (RECONSTRUCTION_METRICS), of
                images vs their originals.
  pixels        images: the images themselves on the host (the sample grid).
JAX networks run under one jit per batch shape: images split over the batch axes, outputs replicated, so
every process holds every output and accumulates the same statistics.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import data
from latent_diffusion.evaluation import digits_cnn, reconstruction, resizing
from latent_diffusion.evaluation.sources import Batch


@dataclasses.dataclass
class Network:
  """outputs(batch) -> {name: host array [B, ...]} (identical on every process); info: figures about itself."""
  outputs: Callable[[Batch], dict[str, np.ndarray]]
  info: dict = dataclasses.field(default_factory=dict)


def replicate(tree, mesh):
  """Host arrays -> global arrays replicated over the mesh (every process passes the same values)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda i: np.asarray(a)[i]), tree)


def sharded_outputs(fn: Callable, params, ctx, with_reference: bool = False) -> Callable[[Batch], dict]:
  """Batch -> host outputs of jit(fn(params, images[, reference]) -> {name: [B, ...]}) on the mesh."""
  params = replicate(params, ctx.mesh)
  jitted = jax.jit(fn, out_shardings=ctx.replicated)

  def outputs(batch: Batch) -> dict[str, np.ndarray]:
    args = (batch.images, batch.reference) if with_reference else (batch.images,)
    return {name: np.asarray(value.addressable_data(0)) for name, value in jitted(params, *args).items()}
  return outputs


def real_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, H, W, C] in [0, 1], labels [N]) of a split held in memory (small data sets: the judges)."""
  return real_data_split(config.data, split)


def real_data_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """real_split of a data config (e.g. the single digits behind a digit-pairs run)."""
  examples = list(data.make_dataset(data_config, split).to_iter_dataset())
  return (np.stack([(e["image"] + 1.0) / 2.0 for e in examples]).astype(np.float32),
          np.array([e["label"] for e in examples]))


def _inception(ctx) -> Network:
  from latent_diffusion.weights.inception import load_inception

  cfg = ctx.config.evaluate.inception
  if not cfg.weights:
    raise FileNotFoundError("config.evaluate.inception.weights is not set: the inception network reads the FID "
                            "weights file pt_inception-2015-12-05-6726825d.pth from a local path.")
  module, params = load_inception(cfg.weights)

  def fn(params, images):
    out = module.apply({"params": params}, resizing.to_inception_input(images, cfg.resize, cfg.quantize))
    return {"pool3": out.pool3, "logits_unbiased": out.logits_unbiased}
  return Network(sharded_outputs(fn, params, ctx))


def _digits_cnn(ctx) -> Network:
  cfg = ctx.config.evaluate.digits_cnn
  train_images, train_labels = real_split(ctx.config, "train")
  module, params = digits_cnn.train_digits_cnn(train_images, train_labels, ctx.config.data.num_classes, cfg.width,
                                               cfg.train_steps, cfg.batch_size, cfg.learning_rate, cfg.seed)
  val_images, val_labels = real_split(ctx.config, "val")
  val_logits = jax.jit(module.apply)({"params": params}, val_images)[1]
  accuracy = float((np.asarray(val_logits).argmax(axis=1) == val_labels).mean())

  def fn(params, images):
    features, logits = module.apply({"params": params}, images)
    return {"features": features, "logits": logits}
  return Network(sharded_outputs(fn, params, ctx), {"feature_network_val_accuracy": accuracy})


def svm_judge(data_config, C: float) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
  """(predict(images [N, H, W, C] in [0, 1]) -> classes [N], accuracy on the real validation split) of an RBF
  SVM trained on the real training split of `data_config` (the digits judge)."""
  from sklearn.svm import SVC

  train_images, train_labels = real_data_split(data_config, "train")
  val_images, val_labels = real_data_split(data_config, "val")
  flat = lambda images: (np.asarray(images) * 2.0 - 1.0).reshape(len(images), -1)  # the SVM sees [-1, 1] pixels
  svm = SVC(gamma="scale", C=C).fit(flat(train_images), train_labels)
  predict = lambda images: svm.predict(flat(images))
  return predict, float((predict(val_images) == val_labels).mean())


def _svm_judge(ctx) -> Network:
  predict, accuracy = svm_judge(ctx.config.data, ctx.config.evaluate.svm_judge.C)

  def outputs(batch: Batch) -> dict[str, np.ndarray]:
    if batch.labels is None:
      raise ValueError("svm_judge needs the conditioning labels of a generated source.")
    return {"correct": (predict(ctx.to_host(batch.images)) == batch.labels).astype(np.float64)}
  return Network(outputs, {"classifier_val_accuracy_real": accuracy})


def _pixels(ctx) -> Network:
  return Network(lambda batch: {"images": ctx.to_host(batch.images)})


def _reconstruction(ctx) -> Network:
  metrics = reconstruction.resolve(ctx.config.evaluate.reconstruction.metrics)

  def fn(params, images, originals):
    del params
    return {name: metric(images, originals) for name, metric in metrics.items()}
  return Network(sharded_outputs(fn, {}, ctx, with_reference=True))


def _clip(ctx) -> Network:
  from latent_diffusion.evaluation import clip_score
  return clip_score.clip_network(ctx)


# Network name -> fn(EvalContext) -> Network (built once per evaluation run, on first use).
NETWORKS: dict[str, Callable] = {"inception": _inception, "digits_cnn": _digits_cnn, "svm_judge": _svm_judge,
                                 "pixels": _pixels, "reconstruction": _reconstruction, "clip": _clip}
