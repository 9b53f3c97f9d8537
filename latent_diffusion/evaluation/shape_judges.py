"""Judges of generated coloured-shapes images (latent_diffusion.data.shapes) for the task evaluators (inpainting,
semantic, layout), fit on real images with their exact ground truth.

  PixelClassifier  RGB -> segmentation class (background or one of the colours) per pixel: a quadratic
                   discriminant (one Gaussian per class) fit on real training pixels.
  ShapeJudge       the pixels of one colour in an object's box (the box widened by a margin, resized to 16 x 16)
                   -> circle / square / triangle / incomplete: an RBF SVM fit on the objects of real training
                   images, and on the same objects with one half of their box erased (so that half a shape, e.g.
                   an inpainting hole left unfilled, is not taken for the whole); the real images also enter
                   blurred (Gaussian, _BLUR_SIGMAS pixels), so that softer edges than the data's, as any decoder
                   gives, are judged by their shape (fit on sharp images only, a sigma of 0.8 pixels halved the
                   verdicts on real images, 1.0 -> 0.42).
Each evaluator reports the judges' scores on real held-out images beside the generated ones (the ceiling), and
a baseline that a model ignoring its condition would reach, so that a collapsed model cannot pass.
"""

import dataclasses

import ml_collections
import numpy as np
from PIL import Image

from latent_diffusion import data
from latent_diffusion.data import shapes

_CROP = 16         # shape-classifier input side
_MARGIN = 0.15     # box widened by this fraction of its side on every side (generated shapes may shift a little)
_BLUR_SIGMAS = (0.6, 1.0)     # blurred copies of the real images the shape judge is fit on (pixels of the image)


def shapes_config(data_config, image_size: int | None = None):
  """config.data as the shapes data set at `image_size` (default: its own)."""
  config = ml_collections.ConfigDict(data_config.to_dict())
  config.update(name="shapes", image_size=image_size or data_config.image_size)
  return config


def examples(data_config, split: str, count: int, image_size: int | None = None) -> dict[str, np.ndarray]:
  """The first `count` examples of a split of the shapes data set, stacked: {'image' [N, S, S, 3] in [-1, 1], ...}."""
  dataset = data.make_dataset(shapes_config(data_config, image_size), split)
  rows = [dataset[i] for i in range(min(count, len(dataset)))]
  return {name: np.stack([r[name] for r in rows]) for name in ("image", "segmentation", "boxes", "box_labels")}


class PixelClassifier:
  """Per-pixel segmentation class of images [N, H, W, 3] in [-1, 1]."""

  def __init__(self, images: np.ndarray, segmentation: np.ndarray, max_pixels: int = 200_000, seed: int = 0):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    pixels, labels = images.reshape(-1, 3), segmentation.reshape(-1)
    chosen = np.random.default_rng(seed).permutation(len(pixels))[:max_pixels]
    self.model = QuadraticDiscriminantAnalysis(reg_param=1e-3).fit(pixels[chosen], labels[chosen])

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self.model.predict(images.reshape(-1, 3)).reshape(images.shape[:-1]).astype(np.int32)


def _box_pixels(box: np.ndarray, side: int, margin: float = 0.0) -> tuple[slice, slice]:
  """(rows, cols) slices of a box (x0, y0, x1, y1) in units of the side, widened by margin * its size."""
  x0, y0, x1, y1 = box
  dx, dy = margin * (x1 - x0), margin * (y1 - y0)
  clip = lambda v: int(np.clip(round(v * side), 0, side))
  return slice(clip(y0 - dy), max(clip(y1 + dy), clip(y0 - dy) + 1)), slice(clip(x0 - dx), max(clip(x1 + dx),
                                                                                                clip(x0 - dx) + 1))


def _crop_feature(pixel_classes: np.ndarray, box: np.ndarray, colour: int, erase: int | None = None) -> np.ndarray:
  """float32 [16 * 16]: where colour `colour` is, in the widened box, resized (area) to 16 x 16; `erase` = 0..3
  removes the left / right / top / bottom half of the box first."""
  colour_mask = (pixel_classes == 1 + colour).astype(np.float32)
  if erase is not None:
    rows, cols = _box_pixels(box, pixel_classes.shape[0])
    middle_row, middle_col = (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2
    half = [(rows, slice(cols.start, middle_col)), (rows, slice(middle_col, cols.stop)),
            (slice(rows.start, middle_row), cols), (slice(middle_row, rows.stop), cols)][erase]
    colour_mask[half] = 0.0
  rows, cols = _box_pixels(box, pixel_classes.shape[0], _MARGIN)
  crop = colour_mask[rows, cols]
  return np.asarray(Image.fromarray(crop, mode="F").resize((_CROP, _CROP), Image.Resampling.BOX)).reshape(-1)


def _objects(boxes: np.ndarray, labels: np.ndarray):
  """(image index, box, shape, colour) of every object of a batch of layouts."""
  for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
    for box, label in zip(image_boxes, image_labels):
      if label >= 0:
        yield (i, box, *shapes.shape_and_colour(int(label)))


@dataclasses.dataclass
class ObjectVerdicts:
  """Per object: is its box's dominant colour the requested one; is the shape of that colour the requested one."""
  colour_correct: np.ndarray
  shape_correct: np.ndarray

  def summary(self, prefix: str = "") -> dict:
    both = self.colour_correct & self.shape_correct
    return {f"{prefix}both_correct": float(both.mean()), f"{prefix}colour_correct": float(self.colour_correct.mean()),
            f"{prefix}shape_correct": float(self.shape_correct.mean()), f"{prefix}objects": int(len(both))}


class ShapeJudge:
  """Is the requested shape, in the requested colour, inside each box? Fit on real images (their exact layouts)."""
  INCOMPLETE = len(shapes.SHAPES)      # the shape class of half an object

  def __init__(self, real: dict[str, np.ndarray], seed: int = 0):
    from sklearn.svm import SVC

    from scipy.ndimage import gaussian_filter

    self.pixels = PixelClassifier(real["image"], real["segmentation"])
    rng = np.random.default_rng(seed)
    features, targets = [], []
    for sigma in (0.0, *_BLUR_SIGMAS):
      classes = self.pixels(gaussian_filter(real["image"], sigma=(0, sigma, sigma, 0)) if sigma else real["image"])
      for i, box, shape, colour in _objects(real["boxes"], real["box_labels"]):
        features += [_crop_feature(classes[i], box, colour), _crop_feature(classes[i], box, colour, rng.integers(4))]
        targets += [shape, self.INCOMPLETE]
    self.shapes = SVC(gamma="scale", C=10.0).fit(np.stack(features), np.array(targets))

  def __call__(self, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> ObjectVerdicts:
    """Verdicts for images [N, S, S, 3] in [-1, 1] and the layouts they should show (boxes [N, M, 4], labels [N, M])."""
    classes = self.pixels(images)
    colour_ok, features, wanted_shapes = [], [], []
    for i, box, shape, colour in _objects(boxes, labels):
      rows, cols = _box_pixels(box, classes.shape[1])
      counts = np.bincount(classes[i, rows, cols].reshape(-1), minlength=shapes.SEGMENTATION_CLASSES)[1:]
      dominant = int(np.argmax(counts))
      colour_ok.append(dominant == colour and counts[dominant] > 0)
      features.append(_crop_feature(classes[i], box, dominant))
      wanted_shapes.append(shape)
    predicted = self.shapes.predict(np.stack(features))
    return ObjectVerdicts(np.array(colour_ok), predicted == np.array(wanted_shapes))


def mean_iou(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, list[float]]:
  """(mean over classes present in target, per-class IoU) of class maps [N, H, W], accumulated over all images."""
  ious = []
  for c in range(num_classes):
    p, t = predicted == c, target == c
    union = np.sum(p | t)
    ious.append(float(np.sum(p & t) / union) if np.any(t) else float("nan"))
  return float(np.nanmean(ious)), ious


def colourize(segmentation: np.ndarray) -> np.ndarray:
  """Class maps [N, H, W] -> images [N, H, W, 3] in [0, 1] (grey background, the shapes' colours)."""
  palette = np.array([(128, 128, 128), *shapes.COLOURS.values()], np.float32) / 255.0
  return palette[segmentation]
