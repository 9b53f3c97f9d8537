"""Class labels through a learned embedding added to the timestep embedding (UNet `y`).

Labels are 0 .. num_classes - 1; the extra index num_classes is the null label of classifier-free
guidance, so the UNet's embedding table has num_classes + 1 rows (derived here, never configured).
"""

import jax.numpy as jnp
import numpy as np

from latent_diffusion.conditioning.base import Conditioner, check_batch


class ClassConditioner(Conditioner):
  """Inputs {'label': int32 [B]}; UNet kwargs {'y': int32 [B]}; null = the label num_classes."""
  name = "class"

  def __init__(self, num_classes: int):
    if num_classes is None or num_classes < 1:
      raise ValueError(f"Class conditioning needs config.data.num_classes >= 1, got {num_classes}.")
    self.num_classes = int(num_classes)

  @property
  def null_label(self) -> int:
    return self.num_classes

  def unet_fields(self) -> dict:
    return {"num_classes": self.num_classes + 1}

  def input_fields(self) -> tuple[str, ...]:
    return ("label",)

  def _checked(self, labels, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ValueError(f"{where}: label {int(bad.flat[0])} is not a class of this model (0..{self.num_classes - 1}); "
                       f"records without a label (stored as -1) cannot train a class-conditional model: use "
                       f"config.ldm.conditioning.kinds=() for unconditional training.")
    return labels.astype(np.int32)

  def prepare(self, example: dict) -> dict:
    if "label" not in example:
      raise ValueError(f"Training example {example.get('key', '')!r} has no 'label' but conditioning is 'class'.")
    return {"label": self._checked(example["label"], f"training example {example.get('key', '')!r}")}

  def request_inputs(self, request: dict, num: int) -> dict:
    if "label" not in request:
      raise ValueError(f"A class-conditional model needs labels (0..{self.num_classes - 1}) to sample.")
    return {"label": self._checked(check_batch("label", request["label"], num, "class labels"), "sampling request")}

  def null_request_inputs(self, request: dict, num: int) -> dict:
    return {"label": np.full((num,), self.null_label, np.int32)}

  def example_inputs(self, batch_size: int, latent_shape) -> dict:
    return {"label": np.zeros((batch_size,), np.int32)}

  def unet_kwargs(self, params, inputs: dict) -> dict:
    return {"y": inputs["label"]}

  def null_unet_kwargs(self, params, inputs: dict) -> dict:
    return {"y": jnp.full_like(inputs["label"], self.null_label)}
