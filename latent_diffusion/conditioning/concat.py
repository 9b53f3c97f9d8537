"""Image-shaped conditions concatenated to x_t along channels (UNet `concat`): masks, masked-image
latents, low-resolution images, segmentation maps, at the latent grid [h, w, channels].

The null condition either keeps the condition (`null='keep'`: it defines the task, as the masked image
of inpainting, and guidance acts on the other conditions) or zeroes it (`null='zeros'`).
"""

import jax.numpy as jnp
import numpy as np

from latent_diffusion.conditioning.base import Conditioner, check_batch

NULLS = ("keep", "zeros")


class ConcatConditioner(Conditioner):
  """Inputs {field: float32 [B, h, w, channels]}; UNet kwargs {'concat': same}."""
  name = "concat"

  def __init__(self, field: str, channels: int, null: str = "keep"):
    if null not in NULLS:
      raise ValueError(f"Unknown concat null {null!r} (config.ldm.conditioning.concat.null); known: {NULLS}.")
    if channels < 1:
      raise ValueError(f"Concat conditioning needs channels >= 1 (config.ldm.conditioning.concat.channels), "
                       f"got {channels}.")
    self.field, self.channels, self.null = field, int(channels), null

  def input_fields(self) -> tuple[str, ...]:
    return (self.field,)

  @property
  def guided(self) -> bool:
    return self.null != "keep"

  def request_grid(self, inputs: dict) -> tuple[int, int]:
    return tuple(inputs[self.field].shape[1:3])

  def _checked(self, value, where: str) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if value.ndim < 3 or value.shape[-1] != self.channels:
      raise ValueError(f"{where}: condition {self.field!r} has shape {value.shape}; the model takes "
                       f"[..., h, w, {self.channels}] (the latent grid, concat channels).")
    return value

  def prepare(self, example: dict) -> dict:
    if self.field not in example:
      raise ValueError(f"Training example {example.get('key', '')!r} has no {self.field!r} (concat conditioning).")
    return {self.field: self._checked(example[self.field], f"training example {example.get('key', '')!r}")}

  def request_inputs(self, request: dict, num: int) -> dict:
    if self.field not in request:
      raise ValueError(f"This model is conditioned on {self.field!r} [B, h, w, {self.channels}]; give it to sample.")
    value = check_batch(self.field, request[self.field], num, "image-shaped condition")
    return {self.field: self._checked(value, "sampling request")}

  def null_request_inputs(self, request: dict, num: int) -> dict:
    value = self.request_inputs(request, num)[self.field]
    return {self.field: value if self.null == "keep" else np.zeros_like(value)}

  def example_inputs(self, batch_size: int, latent_shape) -> dict:
    h, w, _ = latent_shape
    return {self.field: np.zeros((batch_size, h, w, self.channels), np.float32)}

  def unet_kwargs(self, params, inputs: dict) -> dict:
    return {"concat": inputs[self.field]}

  def null_unet_kwargs(self, params, inputs: dict) -> dict:
    value = inputs[self.field]
    return {"concat": value if self.null == "keep" else jnp.zeros_like(value)}
