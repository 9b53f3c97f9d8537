"""The digits feature network makes FID and precision/recall tell real digits from a collapsed set of them
(the CPU-scale version of the quickstart's table, on real images only)."""

import jax
import numpy as np
import pytest

from latent_diffusion.evaluation import metrics, networks
from latent_diffusion.evaluation.digits_cnn import train_digits_cnn
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def features():
  """Digits CNN features of 500 real training images, of the held-out split, and of a collapsed set (the first
  training image of each class, 50 times each), plus the CNN's held-out accuracy."""
  config = tiny_config()
  cfg = config.evaluate.digits_cnn
  train_images, train_labels = networks.real_split(config, "train")
  val_images, val_labels = networks.real_split(config, "val")
  module, params = train_digits_cnn(train_images, train_labels, 10, cfg.width, 400, cfg.batch_size,
                                    cfg.learning_rate, cfg.seed)
  embed = jax.jit(lambda x: module.apply({"params": params}, x))
  subset = np.random.default_rng(0).choice(len(train_images), 500, replace=False)
  first_of_class = [int(np.argmax(train_labels == c)) for c in range(10)]
  collapsed = np.repeat(train_images[first_of_class], 50, axis=0)
  val_features, val_logits = embed(val_images)
  return {"train": np.asarray(embed(train_images[subset])[0]), "val": np.asarray(val_features),
          "collapsed": np.asarray(embed(collapsed)[0]),
          "accuracy": float((np.asarray(val_logits).argmax(1) == val_labels).mean())}


def fid(a, b):
  moments = lambda x: (x.astype(np.float64).mean(axis=0), np.cov(x, rowvar=False))
  return metrics.frechet_distance(*moments(a), *moments(b))


def test_feature_network_is_a_good_digits_classifier(features):
  assert features["accuracy"] > 0.95


def test_collapse_is_exposed_by_fid_and_recall(features):
  floor, collapsed = fid(features["train"], features["val"]), fid(features["collapsed"], features["val"])
  assert collapsed > 5.0 * floor, (floor, collapsed)
  precision, recall = metrics.precision_recall(features["val"], features["train"])
  precision_collapsed, recall_collapsed = metrics.precision_recall(features["val"], features["collapsed"])
  assert precision > 0.7 and recall > 0.7, (precision, recall)
  assert recall_collapsed < 0.05 < precision_collapsed, (precision_collapsed, recall_collapsed)
