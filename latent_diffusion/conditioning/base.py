"""What a conditioner is: the one place that knows how one kind of condition reaches the UNet.

A condition travels in two forms:
  model inputs   numpy/jax arrays with a leading batch axis, made on the host from training
                 examples (`prepare`) or from a sampling request (`request_inputs`), e.g.
                 {'label': int32 [B]}, {'tokens': int32 [B, L]}, {'concat': float32 [B, h, w, k]};
  UNet kwargs    what `UNet.__call__` takes, computed on device from the inputs and the
                 conditioner's parameters (`unet_kwargs`), e.g. {'y': [B]}, {'context': [B, L, D]}.
The null condition of classifier-free guidance is `null_unet_kwargs` (training-time dropout) and
`null_request_inputs` (the unconditional / negative side at sampling).

Conditions that live in the first stage's space (inpainting's masked-image latent, a condition at the
latent grid) are bound to the autoencoder with `with_first_stage`; what varies per training step (random
inpainting masks, noise on a low-resolution image) is drawn on device in `train_inputs`; what the sampler
needs beyond the UNet's inputs (inpainting's known region) comes from `sampler_kwargs`. A conditioner may also
change what the first stage models (`first_stage_image`, host side) and how decoded latents become the sampled
image (`pixels`, device side): residual super-resolution.
"""

import abc
from typing import Any

import numpy as np

Params = Any


class Conditioner(abc.ABC):
  """One kind of condition (class label, text, image-shaped concat); see the module docstring."""

  #: Registry name (config.ldm.conditioning.kinds), also the key of its parameters.
  name: str = ""
  #: `prepare` reads the record's pixels ('image'), so in-memory encoding keeps them beside the latents.
  reads_image: bool = False

  def unet_fields(self) -> dict:
    """UNet constructor fields this condition determines, e.g. {'num_classes': 11}, {'context_dim': 384}."""
    return {}

  @abc.abstractmethod
  def input_fields(self) -> tuple[str, ...]:
    """Names of the model inputs (fields of a prepared training example)."""

  def batch_fields(self) -> tuple[str, ...]:
    """Fields of a prepared training example (what `prepare` returns); default: the model inputs."""
    return self.input_fields()

  @abc.abstractmethod
  def prepare(self, example: dict) -> dict | None:
    """Host side, per training example: {batch field: array} (no batch axis); None drops the example."""

  def train_inputs(self, batch: dict, rng) -> dict:
    """Device side, in the train step: model inputs [B, ...] from a training batch of batch_fields, drawing what is
    random per step (inpainting masks, low-resolution noise); default: the batch as it is."""
    del rng
    return batch

  def with_first_stage(self, autoencoder, params, scale_factor: float | None) -> "Conditioner":
    """This conditioner bound to the model's first stage (module, its params or None, the latent scale or None
    while unknown); default: itself, for conditions that do not depend on it."""
    del autoencoder, params, scale_factor
    return self

  @property
  def guided(self) -> bool:
    """Whether the null condition differs from the condition (else classifier-free guidance has no effect)."""
    return True

  def request_grid(self, inputs: dict) -> tuple[int, int] | None:
    """The latent grid (h, w) the model inputs of a request fix (image-shaped conditions), or None (any size)."""
    del inputs
    return None

  @abc.abstractmethod
  def request_inputs(self, request: dict, num: int) -> dict:
    """Host side: model inputs [num, ...] of a sampling request (labels, prompts, arrays)."""

  @abc.abstractmethod
  def null_request_inputs(self, request: dict, num: int) -> dict:
    """Host side: the model inputs of the unconditional (negative) side of classifier-free guidance."""

  @abc.abstractmethod
  def example_inputs(self, batch_size: int, latent_shape: tuple[int, int, int]) -> dict:
    """Model inputs of the right shapes and dtypes (zeros), for initialisation and abstract shapes."""

  def init_params(self, rng) -> Params:
    """Boxed (logically annotated) parameters trained with the UNet; {} if none."""
    del rng
    return {}

  def frozen_params(self) -> Params:
    """Parameters used but not trained (a frozen pretrained encoder, a precomputed null context); {} if none."""
    return {}

  def abstract_params(self) -> Params:
    """Boxed shapes of init_params and frozen_params together (nothing computed)."""
    import jax

    return jax.eval_shape(lambda: {**self.init_params(jax.random.key(0)), **self.frozen_params()})

  @abc.abstractmethod
  def unet_kwargs(self, params: Params, inputs: dict) -> dict:
    """Device side: UNet keyword arguments [B, ...] from model inputs [B, ...]."""

  @abc.abstractmethod
  def null_unet_kwargs(self, params: Params, inputs: dict) -> dict:
    """Device side: the null condition for the batch of `inputs` (what dropped examples train on)."""

  def sampler_kwargs(self, params: Params, inputs: dict) -> dict:
    """Device side: sampler inputs beyond the UNet's (inpainting's `mask` / `x0_known`); default none."""
    del params, inputs
    return {}

  def first_stage_image(self, image: np.ndarray) -> np.ndarray:
    """Host side: what the first stage encodes of a training image [H, W, C] in [-1, 1] (and what the autoencoder
    stage trains on); default: the image (super-resolution's residual mode: what bicubic upsampling misses)."""
    return image

  def pixels(self, decoded, inputs: dict):
    """Device side: the sampled image [B, H, W, C] in [-1, 1] from the first stage's decoding of the sampled latents
    and the model inputs; default: as decoded (residual super-resolution adds the upsampled low-resolution image)."""
    del inputs
    return decoded


def check_batch(name: str, value: np.ndarray, num: int, what: str) -> np.ndarray:
  """`value` if its leading axis is `num`, else ValueError naming the request field."""
  value = np.asarray(value)
  if value.ndim == 0 or value.shape[0] != num:
    raise ValueError(f"Sampling request field {name!r} ({what}) has shape {value.shape}; expected {num} rows.")
  return value
