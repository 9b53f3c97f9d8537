"""Evaluators by type (config.evaluate.evals.<name>.type), big_vision style: adding one = a function + an entry.

An evaluator declares what it needs as `Request`s per role (a statistic of one output of one network over one
source, or a reference .npz path) and computes its figures from the finished statistics. The runner streams
each source once, runs each network once per batch, and feeds every statistic any evaluator asked for.

Figure names: the type's metric names, plus the part of the evaluator's name after the type (name
'fid_no_guidance' of type 'fid' -> 'fid_no_guidance'; 'precision_recall_collapsed' -> 'precision_collapsed',
'recall_collapsed'); a name not starting with its type appends '_<name>'.
"""

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from latent_diffusion import image_grid
from latent_diffusion.evaluation import (digit_pairs, inpainting, layout, metrics, semantic, statistics,
                                        super_resolution)


class Request(NamedTuple):
  """A statistic `kind` (STATISTICS) of `network`'s output `output` over the images of `source`."""
  source: str
  network: str
  output: str
  kind: str
  option: Any = None


class Mean:
  def __init__(self, total: int, ctx, option):
    self.sum, self.count = 0.0, 0

  def update(self, values, indices, labels):
    self.sum, self.count = self.sum + np.asarray(values, np.float64).sum(axis=0), self.count + len(values)

  def result(self):
    return self.sum / self.count


class PerClassMean:
  """{class: mean} of values grouped by the conditioning label."""
  def __init__(self, total: int, ctx, option):
    self.sums, self.counts = {}, {}

  def update(self, values, indices, labels):
    for label, value in zip(labels, values):
      self.sums[int(label)] = self.sums.get(int(label), 0.0) + float(value)
      self.counts[int(label)] = self.counts.get(int(label), 0) + 1

  def result(self):
    return {label: self.sums[label] / self.counts[label] for label in sorted(self.sums)}


class ClassGrid:
  """The first `option` images of every class, [classes, option, H, W, C]."""
  def __init__(self, total: int, ctx, option):
    self.columns, self.images = option, {}

  def update(self, values, indices, labels):
    for label, image in zip(labels, values):
      row = self.images.setdefault(int(label), [])
      if len(row) < self.columns:
        row.append(image)

  def result(self):
    return np.stack([np.stack(self.images[label]) for label in sorted(self.images)])


class _Adapter:
  """RunningMoments / KeptRows / InceptionScoreAccumulator behind the common update(values, indices, labels)."""
  def __init__(self, make: Callable, feed: Callable):
    self.make, self.feed, self.state = make, feed, None

  def update(self, values, indices, labels):
    if self.state is None:
      self.state = self.make(values)
    self.feed(self.state, values, indices)

  def result(self):
    return self.state.result()


# Statistic kind -> fn(number of samples of the source, EvalContext, option) -> object with update/result.
STATISTICS: dict[str, Callable] = {
    "moments": lambda total, ctx, option: _Adapter(lambda v: statistics.RunningMoments(),
                                                   lambda s, v, i: s.update(v)),
    "kept": lambda total, ctx, option: _Adapter(
        lambda v: statistics.KeptRows(total, ctx.config.evaluate.max_kept_features, ctx.config.evaluate.seed),
        lambda s, v, i: s.update(v, i)),
    "inception_score": lambda total, ctx, option: _Adapter(
        lambda v: metrics.InceptionScoreAccumulator(total, v.shape[1], splits=option),
        lambda s, v, i: s.update(v, i)),
    "mean": Mean,
    "per_class_mean": PerClassMean,
    "class_grid": ClassGrid,
}


def _is_file(reference: str) -> bool:
  return reference.endswith(".npz")


def figure_suffix(name: str, type_name: str) -> str:
  return name[len(type_name):] if name.startswith(type_name) else f"_{name}"


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
  """requests(cfg, ctx) -> {role: Request | reference path}; compute(cfg, results by role, ctx, suffix) -> figures."""
  requests: Callable[[Any, Any], dict]
  compute: Callable[[Any, dict, Any, str], dict]


def _features(cfg, source: str, kind: str, option=None):
  return Request(source, cfg.network, cfg.output, kind, option)


def _fid_requests(cfg, ctx):
  reference = cfg.reference if _is_file(cfg.reference) else _features(cfg, cfg.reference, "moments")
  return {"samples": _features(cfg, cfg.samples, "moments"), "reference": reference}


def _fid(cfg, results, ctx, suffix):
  reference = results["reference"]
  mu, sigma = statistics.load_reference(reference) if isinstance(reference, str) else reference
  return {f"fid{suffix}": metrics.frechet_distance(*results["samples"], mu, sigma)}


def _kid(cfg, results, ctx, suffix):
  mean, std = metrics.kernel_inception_distance(results["samples"], results["reference"], cfg.subsets,
                                                cfg.subset_size)
  return {f"kid{suffix}": mean, f"kid_std{suffix}": std}


def _precision_recall(cfg, results, ctx, suffix):
  precision, recall = metrics.precision_recall(results["reference"], results["samples"], cfg.k)
  return {f"precision{suffix}": precision, f"recall{suffix}": recall}


def _inception_score(cfg, results, ctx, suffix):
  mean, std = results["samples"]
  return {f"inception_score{suffix}": mean, f"inception_score_std{suffix}": std}


def _memorization(cfg, results, ctx, suffix):
  """Nearest-training-neighbour distances: generated samples much closer to training images than held-out real
  images are (ratio well below 1) means the model reproduces its training set."""
  generated = metrics.nearest_neighbour_distances(results["samples"], results["train"])
  heldout = metrics.nearest_neighbour_distances(results["reference"], results["train"])
  return {f"memorization_nn_generated{suffix}": float(np.median(generated)),
          f"memorization_nn_heldout{suffix}": float(np.median(heldout)),
          f"memorization_ratio{suffix}": float(np.median(generated) / np.median(heldout))}


def _classifier_accuracy(cfg, results, ctx, suffix):
  per_class = results["samples"]
  return {f"generated_accuracy{suffix}": float(np.mean(list(per_class.values()))),
          f"generated_accuracy_per_class{suffix}": [per_class[c] for c in sorted(per_class)],
          f"generated_samples{suffix}": ctx.samples_per_class * len(per_class)}


def _reconstruction(cfg, results, ctx, suffix):
  return {f"{metric}{suffix}": float(results[metric]) for metric in ctx.config.evaluate.reconstruction.metrics}


def _sample_grid(cfg, results, ctx, suffix):
  grid = results["samples"]                                            # [classes, columns, H, W, C]
  path = pathlib.Path(ctx.workdir) / f"samples{suffix}.png"
  if ctx.is_writer:
    image_grid.save_grid(grid.reshape(-1, *grid.shape[2:]), rows=grid.shape[0], path=path)
  return {f"sample_grid{suffix}": path.name}


def _kept_pair(cfg, ctx):
  return {"samples": _features(cfg, cfg.samples, "kept"), "reference": _features(cfg, cfg.reference, "kept")}


EVALUATORS: dict[str, EvaluatorType] = {
    "fid": EvaluatorType(_fid_requests, _fid),
    "kid": EvaluatorType(_kept_pair, _kid),
    "precision_recall": EvaluatorType(_kept_pair, _precision_recall),
    "inception_score": EvaluatorType(
        lambda cfg, ctx: {"samples": _features(cfg, cfg.samples, "inception_score", cfg.splits)}, _inception_score),
    "memorization": EvaluatorType(
        lambda cfg, ctx: {**_kept_pair(cfg, ctx), "train": _features(cfg, cfg.train, "kept")}, _memorization),
    "classifier_accuracy": EvaluatorType(
        lambda cfg, ctx: {"samples": Request(cfg.samples, "svm_judge", "correct", "per_class_mean")},
        _classifier_accuracy),
    "reconstruction": EvaluatorType(
        lambda cfg, ctx: {m: Request(cfg.samples, "reconstruction", m, "mean")
                          for m in ctx.config.evaluate.reconstruction.metrics}, _reconstruction),
    "clip_score": EvaluatorType(
        lambda cfg, ctx: {"samples": Request(cfg.samples, "clip", "score", "mean")},
        lambda cfg, results, ctx, suffix: {f"clip_score{suffix}": float(results["samples"])}),
    # The text quickstart's judge; it draws its own samples from prompts (no streamed source).
    "digit_pairs": EvaluatorType(lambda cfg, ctx: {}, digit_pairs.evaluate_digit_pairs),
    # The task judges (config.evaluate.tasks); each conditions the model on held-out examples itself.
    "inpainting": EvaluatorType(lambda cfg, ctx: {}, inpainting.evaluate_inpainting),
    "semantic": EvaluatorType(lambda cfg, ctx: {}, semantic.evaluate_semantic),
    "layout": EvaluatorType(lambda cfg, ctx: {}, layout.evaluate_layout),
    "super_resolution": EvaluatorType(lambda cfg, ctx: {}, super_resolution.evaluate_super_resolution),
    "sample_grid": EvaluatorType(
        lambda cfg, ctx: {"samples": Request(cfg.samples, "pixels", "images", "class_grid",
                                             ctx.config.evaluate.grid_columns)}, _sample_grid),
}
