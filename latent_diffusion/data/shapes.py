"""Coloured shapes on varied backgrounds, with exact ground truth: a procedural data set for the layout,
semantic-synthesis, inpainting and text tasks that needs no download.

Each image holds 1..max_objects circles / squares / triangles of four saturated colours, several sizes, their
bounding boxes disjoint, on a smooth gradient between two muted (greyish) colours. Shapes are drawn with hard
edges at pixel centres, so the ground truth is exact at any resolution:
  segmentation  int32 [S, S]: 0 background, 1 + colour index where an object is (SEGMENTATION_CLASSES classes);
  boxes         float32 [max_objects, 4]: tight (x0, y0, x1, y1) of each object's pixels over the side S, in [0, 1];
  box_labels    int32 [max_objects]: object class = shape index * len(COLOURS) + colour index, -1 past the last;
  caption       'a red circle, a blue square and a yellow triangle' (objects left to right).
Example i of a split is drawn from a generator seeded by (seed, split, i) and scaled to `image_size`, so the same
example rendered at twice the size has the same objects in the same places.
"""

import grain
import numpy as np

SHAPES = ("circle", "square", "triangle")
# Saturated object colours (RGB); backgrounds are muted greys (every channel within 30 of their mean).
COLOURS = {"red": (220, 50, 50), "green": (50, 170, 70), "blue": (50, 90, 220), "yellow": (230, 200, 50)}
NUM_OBJECT_CLASSES = len(SHAPES) * len(COLOURS)
SEGMENTATION_CLASSES = 1 + len(COLOURS)
SPLITS = ("train", "val")
_PALETTE = np.array(list(COLOURS.values()), np.float32)


def object_class(shape: int, colour: int) -> int:
  return shape * len(COLOURS) + colour


def shape_and_colour(label: int) -> tuple[int, int]:
  """(shape index, colour index) of an object class."""
  return label // len(COLOURS), label % len(COLOURS)


def describe(label: int) -> str:
  shape, colour = shape_and_colour(label)
  return f"{list(COLOURS)[colour]} {SHAPES[shape]}"


def caption(labels, boxes) -> str:
  """'a red circle', 'a red circle and a blue square', 'a, b and c': objects left to right."""
  order = np.argsort([box[0] for box in boxes], kind="stable")
  names = [f"a {describe(int(labels[i]))}" for i in order]
  return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _layout(rng: np.random.Generator, max_objects: int, min_size: float, max_size: float) -> list[tuple]:
  """Objects (shape, colour, x, y, size) in units of the image side, boxes [x, x+size] x [y, y+size] disjoint
  with a gap of 1/32 (rejection sampling; an object that does not fit after 50 tries is left out)."""
  count = int(rng.integers(1, max_objects + 1))
  objects, gap = [], 1 / 32
  for _ in range(count):
    for _ in range(50):
      size = float(rng.uniform(min_size, max_size))
      x, y = (float(v) for v in rng.uniform(0.0, 1.0 - size, 2))
      if all(x + size + gap <= ox or ox + osize + gap <= x or y + size + gap <= oy or oy + osize + gap <= y
             for _, _, ox, oy, osize in objects):
        objects.append((int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))), x, y, size))
        break
  return objects


def _shape_mask(shape: str, x: float, y: float, size: float, side: int) -> np.ndarray:
  """bool [side, side]: pixels whose centre lies inside the shape (object box at (x, y), width size, unit side)."""
  centres = (np.arange(side, dtype=np.float64) + 0.5) / side
  px, py = centres[None, :], centres[:, None]
  inside_box = (px >= x) & (px < x + size) & (py >= y) & (py < y + size)
  if shape == "square":
    return inside_box
  if shape == "circle":
    r = size / 2
    return (px - x - r) ** 2 + (py - y - r) ** 2 <= r * r
  # An upward isosceles triangle: apex at the top middle, base along the bottom of the box.
  u = (py - y) / size                               # 0 at the apex row, 1 at the base
  return inside_box & (np.abs(px - x - size / 2) <= u * size / 2)


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
  """float32 [side, side, 3] in 0..255: a linear gradient at a random angle between two muted colours."""
  ends = rng.uniform(70, 180, (2, 1)) + rng.uniform(-30, 30, (2, 3))             # greys with a tint
  angle = rng.uniform(0, 2 * np.pi)
  centres = (np.arange(side) + 0.5) / side - 0.5
  t = np.cos(angle) * centres[None, :] + np.sin(angle) * centres[:, None]          # [side, side] in ~[-0.7, 0.7]
  t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
  return (ends[0] * (1 - t[..., None]) + ends[1] * t[..., None]).astype(np.float32)


def render(seed: tuple, side: int, max_objects: int = 3, min_size: float = 0.25, max_size: float = 0.45) -> dict:
  """One example (see the module docstring) from a generator seeded by `seed`, at side x side pixels."""
  rng = np.random.default_rng(seed)
  objects = _layout(rng, max_objects, min_size, max_size)
  image = _background(rng, side)
  segmentation = np.zeros((side, side), np.int32)
  boxes = np.zeros((max_objects, 4), np.float32)
  labels = np.full((max_objects,), -1, np.int32)
  for i, (shape, colour, x, y, size) in enumerate(objects):
    mask = _shape_mask(SHAPES[shape], x, y, size, side)
    image[mask] = _PALETTE[colour]
    segmentation[mask] = 1 + colour
    rows, cols = np.nonzero(mask)
    boxes[i] = (cols.min() / side, rows.min() / side, (cols.max() + 1) / side, (rows.max() + 1) / side)
    labels[i] = object_class(shape, colour)
  count = len(objects)
  return {"image": image / 127.5 - 1.0, "segmentation": segmentation, "boxes": boxes, "box_labels": labels,
          "caption": caption(labels[:count], boxes[:count])}


class _ShapesExample(grain.transforms.Map):
  def __init__(self, side: int, seed: int, split: str, options):
    self.side, self.seed, self.split_index = side, seed, SPLITS.index(split)
    self.options = dict(max_objects=options.max_objects, min_size=options.min_size, max_size=options.max_size)

  def map(self, index: int) -> dict:
    return render((self.seed, self.split_index, int(index)), self.side, **self.options)


def make_shapes_dataset(data_config, split: str) -> grain.MapDataset:
  """Examples {'image': float32 [S, S, 3] in [-1, 1], 'segmentation', 'boxes', 'box_labels', 'caption'} at
  S = config.data.image_size: config.data.shapes.examples of them for 'train', val_examples for 'val'."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  if data_config.image_width not in (None, data_config.image_size):
    raise ValueError(f"shapes images are square: config.data.image_width={data_config.image_width} must be None "
                     f"or image_size={data_config.image_size}.")
  options = data_config.shapes
  count = options.examples if split == "train" else data_config.val_examples
  return grain.MapDataset.range(count).map(_ShapesExample(data_config.image_size, options.seed, split, options))
