"""Layout-to-image: bounding boxes with class labels, tokenized and encoded by a transformer trained with the
UNet, fed through cross-attention (the paper's layout-to-image LDM on COCO / OpenImages layouts).

A layout is boxes float [M, 4] as (x0, y0, x1, y1) in units of the image side ([0, 1]) and class ids int [M],
-1 = no object. Tokens: [BOS] (class, x0, y0, x1, y1) per object, in the given order, [EOS], then [PAD] up to
2 + 5 max_objects; each coordinate quantized to one of `bins` levels. The encoder is the text conditioner's
BERT-style transformer (trained from scratch); the null condition is the encoding of the empty layout.

Optionally (`box_map`) the boxes also reach the UNet as a map concatenated to x_t: per latent cell, the fraction of
it each class's boxes cover [h, w, num_classes] (zeros for the null condition), as layout models that ground their
objects spatially do (GLIGEN, LayoutDiffusion); the tokens and cross-attention stay. Such a model samples at its
trained size, which the map fixes.
"""

import jax.numpy as jnp
import numpy as np

from latent_diffusion.conditioning.base import check_batch
from latent_diffusion.conditioning.text import TextConditioner


class LayoutTokenizer:
  """Layouts <-> token ids int32 [2 + 5 max_objects]; ids: PAD 0, BOS 1, EOS 2, classes 3.., coordinates after."""
  PAD, BOS, EOS = 0, 1, 2

  def __init__(self, num_classes: int, bins: int, max_objects: int):
    if num_classes < 1 or bins < 2 or max_objects < 1:
      raise ValueError(f"A layout tokenizer needs num_classes >= 1, bins >= 2, max_objects >= 1; got {num_classes}, "
                       f"{bins}, {max_objects} (config.data.num_classes, config.ldm.conditioning.layout).")
    self.num_classes, self.bins, self.max_objects = num_classes, bins, max_objects
    self.model_max_length = 2 + 5 * max_objects

  def __len__(self) -> int:
    return 3 + self.num_classes + self.bins

  def _coordinate_tokens(self, box: np.ndarray) -> np.ndarray:
    levels = np.clip(np.round(box * (self.bins - 1)), 0, self.bins - 1).astype(np.int32)
    return 3 + self.num_classes + levels

  def encode(self, boxes, labels, where: str = "layout") -> np.ndarray:
    """Token ids int32 [L] of one layout; ValueError naming an unknown class id, a bad box or too many objects."""
    boxes, labels = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)
    if len(boxes) != len(labels):
      raise ValueError(f"{where}: {len(boxes)} boxes for {len(labels)} class labels.")
    tokens = [self.BOS]
    for i, (box, label) in enumerate(zip(boxes, labels)):
      if label == -1:
        continue
      if not 0 <= label < self.num_classes:
        raise ValueError(f"{where}: object {i} has class id {int(label)}, not a class of this model "
                         f"(0..{self.num_classes - 1}; -1 = no object).")
      if not (np.all((box >= 0) & (box <= 1)) and box[0] <= box[2] and box[1] <= box[3]):
        raise ValueError(f"{where}: object {i} has box {box.tolist()}; expected (x0, y0, x1, y1) in [0, 1] with "
                         f"x0 <= x1 and y0 <= y1.")
      tokens += [3 + int(label), *self._coordinate_tokens(box)]
    objects = (len(tokens) - 1) // 5
    if objects > self.max_objects:
      raise ValueError(f"{where}: {objects} objects; this model takes at most {self.max_objects} "
                       f"(config.ldm.conditioning.layout.max_objects).")
    tokens.append(self.EOS)
    return np.array(tokens + [self.PAD] * (self.model_max_length - len(tokens)), np.int32)

  def decode(self, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(boxes float32 [n, 4] at the quantization levels, class ids int32 [n]) of token ids [L]."""
    tokens = list(np.asarray(tokens))
    body = tokens[1:tokens.index(self.EOS)]
    objects = np.array(body, np.int64).reshape(-1, 5)
    levels = objects[:, 1:] - 3 - self.num_classes
    return (levels / (self.bins - 1)).astype(np.float32), (objects[:, 0] - 3).astype(np.int32)


class LayoutConditioner(TextConditioner):
  """Records / requests: 'boxes' [(B,) M, 4], 'box_labels' [(B,) M]; inputs {'tokens': int32 [B, L]} (+ 'box_map'
  float32 [B, h, w, num_classes]); UNet kwargs {'context': [B, L, D]} from the jointly trained encoder (+ 'concat':
  the box map)."""
  name = "layout"

  def __init__(self, tokenizer: LayoutTokenizer, encoder, box_map: bool = False,
               image_size: tuple[int, int] | None = None, factor: int | None = None):
    super().__init__(tokenizer, encoder, None, train_encoder=True)
    self.box_map, self.image_size, self.factor = box_map, image_size, factor

  def with_first_stage(self, autoencoder, params, scale_factor):
    return LayoutConditioner(self.tokenizer, self.encoder, self.box_map, self.image_size,
                             autoencoder.downsampling_factor)

  def input_fields(self) -> tuple[str, ...]:
    return ("tokens",) + (("box_map",) if self.box_map else ())

  @property
  def grid(self) -> tuple[int, int]:
    """The latent grid (h, w) of the box map: the trained image size over the autoencoder's factor."""
    if self.factor is None or self.image_size is None:
      raise ValueError("The layout conditioner's box map needs the image size and a first stage "
                       "(Conditioning.with_first_stage).")
    return self.image_size[0] // self.factor, self.image_size[1] // self.factor

  def request_grid(self, inputs: dict) -> tuple[int, int] | None:
    return tuple(inputs["box_map"].shape[1:3]) if self.box_map else None

  def _inputs(self, boxes, labels, where: str) -> dict:
    """{'tokens' [L], 'box_map'? [h, w, num_classes]} of one layout (tokenizing checks it first)."""
    inputs = {"tokens": self.tokenizer.encode(boxes, labels, where)}
    if self.box_map:
      h, w = self.grid
      cover = lambda lo, hi, n: np.clip(np.minimum(np.arange(1, n + 1) / n, hi) - np.maximum(np.arange(n) / n, lo),
                                        0.0, None) * n                       # fraction of each of n cells in [lo, hi]
      box_map = np.zeros((h, w, self.tokenizer.num_classes), np.float32)
      for (x0, y0, x1, y1), label in zip(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)):
        if label >= 0:
          box_map[:, :, label] += cover(y0, y1, h)[:, None] * cover(x0, x1, w)[None, :]
      inputs["box_map"] = np.minimum(box_map, 1.0)
    return inputs

  def empty_tokens(self) -> dict:
    return {"tokens": self.tokenizer.encode(np.zeros((0, 4)), np.zeros((0,)))[None]}

  def prepare(self, example: dict) -> dict:
    key = example.get("key", "")
    missing = [name for name in ("boxes", "box_labels") if name not in example]
    if missing:
      raise ValueError(f"Training example {key!r} has no {missing} (layout conditioning).")
    return self._inputs(example["boxes"], example["box_labels"], f"training example {key!r}")

  def request_inputs(self, request: dict, num: int) -> dict:
    missing = [name for name in ("boxes", "box_labels") if name not in request]
    if missing:
      raise ValueError(f"A layout-conditional model needs {missing} to sample: 'boxes' float [B, M, 4] as "
                       f"(x0, y0, x1, y1) in [0, 1], 'box_labels' int [B, M] (-1 = no object).")
    boxes = check_batch("boxes", request["boxes"], num, "layout boxes [B, M, 4]")
    labels = check_batch("box_labels", request["box_labels"], num, "layout class ids [B, M]")
    layouts = [self._inputs(b, l, f"sampling request, layout {i}") for i, (b, l) in enumerate(zip(boxes, labels))]
    return {name: np.stack([layout[name] for layout in layouts]) for name in self.input_fields()}

  def null_request_inputs(self, request: dict, num: int) -> dict:
    null = {"tokens": np.repeat(self._null_tokens["tokens"], num, axis=0)}
    if self.box_map:
      null["box_map"] = np.zeros((num, *self.grid, self.tokenizer.num_classes), np.float32)
    return null

  def example_inputs(self, batch_size: int, latent_shape) -> dict:
    inputs = super().example_inputs(batch_size, latent_shape)
    if self.box_map:
      inputs["box_map"] = np.zeros((batch_size, *latent_shape[:2], self.tokenizer.num_classes), np.float32)
    return inputs

  def unet_kwargs(self, params, inputs: dict) -> dict:
    kwargs = super().unet_kwargs(params, inputs)     # (the null context comes from the tokens alone: no map)
    return {**kwargs, "concat": inputs["box_map"]} if "box_map" in inputs else kwargs

  def null_unet_kwargs(self, params, inputs: dict) -> dict:
    kwargs = super().null_unet_kwargs(params, {"tokens": inputs["tokens"]})
    return {**kwargs, "concat": jnp.zeros_like(inputs["box_map"])} if self.box_map else kwargs
