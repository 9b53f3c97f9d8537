"""Random inpainting masks drawn on the device, a fresh batch every training step (1 = to fill, 0 = known).

Each mask is full with probability full_prob, empty with probability empty_prob, and otherwise the union of
0..max_boxes axis-aligned boxes and 0..max_strokes thick strokes (at least one of them): a stroke is a polyline
of `stroke_vertices` points, a random walk of random turns and lengths, drawn with a random width. Sizes are
fractions of the image's shorter side, so the same options give the same look at any resolution (the free-form
masks of LaMa / SD-inpainting training, in a form that runs inside the jitted step).
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
  max_boxes: int = 2
  box_size: tuple[float, float] = (0.15, 0.6)
  max_strokes: int = 2
  stroke_vertices: int = 4
  stroke_width: tuple[float, float] = (0.08, 0.2)
  stroke_step: tuple[float, float] = (0.1, 0.4)

  def __post_init__(self):
    if not (0 <= self.full_prob and 0 <= self.empty_prob and self.full_prob + self.empty_prob <= 1):
      raise ValueError(f"Mask probabilities full_prob={self.full_prob}, empty_prob={self.empty_prob} must be >= 0 "
                       f"and sum to at most 1 (config.ldm.conditioning.inpaint.masks).")
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
  return {"kind": (), "boxes": (), "strokes": (), "box_size": (options.max_boxes, 2),
          "box_corner": (options.max_boxes, 2), "stroke_start": (options.max_strokes, 1, 2),
          "stroke_angle": (options.max_strokes, segments), "stroke_step": (options.max_strokes, segments),
          "stroke_width": (options.max_strokes,)}


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


def _one_mask(u: jax.Array, height: int, width: int, options: MaskOptions):
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
  u = d["kind"]
  mask = jnp.where(u < options.full_prob, True, jnp.where(u < options.full_prob + options.empty_prob, False, mask))
  return mask.astype(jnp.float32)[..., None]


def random_masks(rng: jax.Array, batch: int, height: int, width: int, options: MaskOptions) -> jax.Array:
  """float32 [batch, height, width, 1] in {0, 1}, 1 = to fill; one independent mask per example.

  All randomness comes from one uniform draw [batch, n] (one random-bits computation: XLA:CPU compiles each
  random call separately, ~0.5 s apiece).
  """
  count = sum(math.prod(shape) for shape in _draw_shapes(options).values())
  u = jax.random.uniform(rng, (batch, count))
  return jax.vmap(lambda row: _one_mask(row, height, width, options))(u)
