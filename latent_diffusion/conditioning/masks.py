"""Random inpainting masks drawn on the device, a fresh batch every training step (1 = to fill, 0 = known).

Each mask is full with probability full_prob, empty with probability empty_prob, over part of one object with
probability object_prob, and otherwise the union of 0..max_boxes axis-aligned boxes and 0..max_strokes thick
strokes (at least one of them): a stroke is a polyline of `stroke_vertices` points, a random walk of random turns
and lengths, drawn with a random width. Sizes are fractions of the image's shorter side, so the same options give
the same look at any resolution (the free-form masks of LaMa / SD-inpainting training, in a form that runs inside
the jitted step). An object mask covers one side (left, right, top or bottom, at random) of a random object's box,
a fraction object_part of the box's extent: the object masking of Imagen Editor's training (Wang et al. 2023),
which teaches the model to complete objects rather than fill background; it needs the examples' boxes, and an
example without any box gets a box-and-stroke mask instead.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MaskOptions:
  """See the module docstring; sizes are fractions of the shorter image side."""
  full_prob: float = 0.1
  empty_prob: float = 0.05
  object_prob: float = 0.0
  object_part: tuple[float, float] = (0.3, 0.7)
  max_boxes: int = 2
  box_size: tuple[float, float] = (0.15, 0.6)
  max_strokes: int = 2
  stroke_vertices: int = 4
  stroke_width: tuple[float, float] = (0.08, 0.2)
  stroke_step: tuple[float, float] = (0.1, 0.4)

  def __post_init__(self):
    probs = (self.full_prob, self.empty_prob, self.object_prob)
    if min(probs) < 0 or sum(probs) > 1:
      raise ValueError(f"Mask probabilities full_prob={self.full_prob}, empty_prob={self.empty_prob}, "
                       f"object_prob={self.object_prob} must be >= 0 and sum to at most 1 "
                       f"(config.ldm.conditioning.inpaint.masks).")
    if not 0 < self.object_part[0] <= self.object_part[1] <= 1:
      raise ValueError(f"object_part={self.object_part} must be fractions 0 < low <= high <= 1 of an object's box "
                       f"(config.ldm.conditioning.inpaint.masks).")
    if self.max_boxes < 0 or self.max_strokes < 0 or self.max_boxes + self.max_strokes == 0:
      raise ValueError(f"Masks need max_boxes + max_strokes >= 1 (got {self.max_boxes}, {self.max_strokes}).")
    if self.stroke_vertices < 2:
      raise ValueError(f"A stroke needs stroke_vertices >= 2, got {self.stroke_vertices}.")


def _draws(u: jax.Array, shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
  """The flat U(0, 1) vector `u` cut into named arrays of these shapes, in order."""
  out, start = {}, 0
  for name, shape in shapes.items():
    size = math.prod(shape)
    out[name] = u[start:start + size].reshape(shape)
    start += size
  return out


def _draw_shapes(options: MaskOptions) -> dict[str, tuple[int, ...]]:
  segments = options.stroke_vertices - 1
  shapes = {"kind": (), "boxes": (), "strokes": (), "box_size": (options.max_boxes, 2),
            "box_corner": (options.max_boxes, 2), "stroke_start": (options.max_strokes, 1, 2),
            "stroke_angle": (options.max_strokes, segments), "stroke_step": (options.max_strokes, segments),
            "stroke_width": (options.max_strokes,)}
  if options.object_prob:                    # drawn last and only then: masks without objects stay as they were
    shapes.update(object=(), object_side=(), object_part=())
  return shapes


def _between(u, bounds):
  return bounds[0] + u * (bounds[1] - bounds[0])


def _boxes(d: dict, count, x, y, extent, options: MaskOptions):
  """bool [H, W]: the union of the first `count` of max_boxes random boxes."""
  size = _between(d["box_size"], options.box_size)                                   # [K, (w, h)]
  corner = d["box_corner"] * (extent - size)                                          # inside the image
  inside = ((x >= corner[:, None, None, 0]) & (x < corner[:, None, None, 0] + size[:, None, None, 0])
            & (y >= corner[:, None, None, 1]) & (y < corner[:, None, None, 1] + size[:, None, None, 1]))
  used = jnp.arange(options.max_boxes) < count
  return jnp.any(inside & used[:, None, None], axis=0)


def _strokes(d: dict, count, x, y, extent, options: MaskOptions):
  """bool [H, W]: the union of the first `count` of max_strokes random thick polylines."""
  start = d["stroke_start"] * extent                                                  # [S, 1, 2]
  angle = jnp.cumsum(d["stroke_angle"] * 2 * jnp.pi, axis=1)
  step = _between(d["stroke_step"], options.stroke_step)
  moves = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1) * step[..., None]      # [S, V-1, 2]
  vertices = jnp.clip(jnp.concatenate([start, start + jnp.cumsum(moves, axis=1)], axis=1), 0.0, extent)
  a, b = vertices[:, :-1, None, None, :], vertices[:, 1:, None, None, :]               # [S, V-1, 1, 1, 2]
  p = jnp.stack([x, y], axis=-1)                                                      # [H, W, 2]
  ab = b - a
  t = jnp.clip(jnp.sum((p - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
  distance = jnp.linalg.norm(p - a - t[..., None] * ab, axis=-1)                       # [S, V-1, H, W]
  half_width = _between(d["stroke_width"], options.stroke_width)[:, None, None, None] / 2
  inside = jnp.any(distance <= half_width, axis=1)                                    # [S, H, W]
  used = jnp.arange(options.max_strokes) < count
  return jnp.any(inside & used[:, None, None], axis=0)


def _object_part(d: dict, boxes, x, y, extent, options: MaskOptions):
  """(bool [H, W]: one side of one random box of `boxes` [M, 4], whether there was a box to choose).

  Boxes are (x0, y0, x1, y1) in fractions of the width and height; rows with x1 <= x0 or y1 <= y0 are no object.
  """
  valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  count = jnp.sum(valid)
  k = jnp.minimum(jnp.floor(d["object"] * count), count - 1)                          # the k-th valid box
  x0, y0, x1, y1 = boxes[jnp.argmax(jnp.cumsum(valid) > k)] * jnp.tile(extent, 2)     # in units of the side
  part = _between(d["object_part"], options.object_part)
  inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
  sides = jnp.stack([x < x0 + part * (x1 - x0), x >= x1 - part * (x1 - x0),
                     y < y0 + part * (y1 - y0), y >= y1 - part * (y1 - y0)])
  side = jnp.minimum(jnp.floor(d["object_side"] * 4), 3).astype(jnp.int32)
  return inside & sides[side], count > 0


def _one_mask(u: jax.Array, objects: jax.Array, height: int, width: int, options: MaskOptions):
  d = _draws(u, _draw_shapes(options))
  side = min(height, width)
  extent = jnp.array([width / side, height / side])
  x = ((jnp.arange(width) + 0.5) / side)[None, :].repeat(height, 0)                   # pixel centres [H, W]
  y = ((jnp.arange(height) + 0.5) / side)[:, None].repeat(width, 1)
  boxes = jnp.minimum(jnp.floor(d["boxes"] * (options.max_boxes + 1)), options.max_boxes)
  strokes = jnp.minimum(jnp.floor(d["strokes"] * (options.max_strokes + 1)), options.max_strokes)
  # Never both zero: a random mask always has something to fill.
  strokes = jnp.where((boxes == 0) & (strokes == 0), 1, strokes) if options.max_strokes else strokes
  boxes = jnp.where((boxes == 0) & (strokes == 0), 1, boxes)
  mask = _boxes(d, boxes, x, y, extent, options) if options.max_boxes else jnp.zeros((height, width), bool)
  if options.max_strokes:
    mask = mask | _strokes(d, strokes, x, y, extent, options)
  u, full, empty = d["kind"], options.full_prob, options.full_prob + options.empty_prob
  if options.object_prob:
    part, any_object = _object_part(d, objects, x, y, extent, options)
    mask = jnp.where((u >= empty) & (u < empty + options.object_prob) & any_object, part, mask)
  mask = jnp.where(u < full, True, jnp.where(u < empty, False, mask))
  return mask.astype(jnp.float32)[..., None]


def random_masks(rng: jax.Array, batch: int, height: int, width: int, options: MaskOptions,
                 boxes: jax.Array | None = None) -> jax.Array:
  """float32 [batch, height, width, 1] in {0, 1}, 1 = to fill; one independent mask per example.

  boxes: float [batch, M, 4], each example's object boxes (x0, y0, x1, y1) in [0, 1] (empty rows: zeros), needed
  when options.object_prob > 0. All randomness comes from one uniform draw [batch, n] (one random-bits
  computation: XLA:CPU compiles each random call separately, ~0.5 s apiece).
  """
  if boxes is None:
    if options.object_prob:
      raise ValueError(f"object_prob={options.object_prob} masks parts of objects: pass the examples' boxes "
                       f"[batch, M, 4].")
    boxes = jnp.zeros((batch, 1, 4), jnp.float32)
  count = sum(math.prod(shape) for shape in _draw_shapes(options).values())
  u = jax.random.uniform(rng, (batch, count))
  return jax.vmap(lambda row, b: _one_mask(row, b, height, width, options))(u, jnp.asarray(boxes, jnp.float32))
