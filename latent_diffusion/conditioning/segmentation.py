"""Semantic synthesis: a segmentation map, one-hot and averaged over the first stage's f x f cells, concatenated
to x_t (the paper's LDM on landscapes / shapes maps). The UNet is convolutional, so a map larger than the
training size gives a correspondingly larger image.

Records and requests give 'segmentation' int [(B,) H, W] class ids (pixels); the model input 'segmentation' is
float32 [B, H / f, W / f, num_classes]: each latent cell's fraction of pixels of each class.
"""

import numpy as np

from latent_diffusion.conditioning.base import check_batch
from latent_diffusion.conditioning.concat import ConcatConditioner


class SegmentationConditioner(ConcatConditioner):
  """Inputs {'segmentation': float32 [B, h, w, num_classes]}; UNet kwargs {'concat': same}."""
  name = "segmentation"

  def __init__(self, num_classes: int, null: str = "keep", factor: int | None = None):
    super().__init__("segmentation", num_classes, null)
    self.factor = factor

  def with_first_stage(self, autoencoder, params, scale_factor):
    return SegmentationConditioner(self.channels, self.null, autoencoder.downsampling_factor)

  def class_fractions(self, maps, where: str) -> np.ndarray:
    """int class maps [..., H, W] -> float32 [..., H / f, W / f, num_classes]; ValueError naming a bad id or size."""
    if self.factor is None:
      raise ValueError("The segmentation conditioner is not bound to a first stage (Conditioning.with_first_stage).")
    maps = np.asarray(maps)
    f, k = self.factor, self.channels
    if maps.ndim < 2 or maps.shape[-2] % f or maps.shape[-1] % f:
      raise ValueError(f"{where}: segmentation map of shape {maps.shape}; its height and width must be multiples of "
                       f"the autoencoder's factor {f} (the map is at the image's pixel size).")
    bad = maps[(maps < 0) | (maps >= k)]
    if bad.size:
      raise ValueError(f"{where}: segmentation class id {int(bad.flat[0])} is not a class of this model (0..{k - 1}).")
    one_hot = np.eye(k, dtype=np.float32)[maps.astype(np.int64)]                          # [..., H, W, K]
    h, w = maps.shape[-2] // f, maps.shape[-1] // f
    return one_hot.reshape(*maps.shape[:-2], h, f, w, f, k).mean(axis=(-4, -2))

  def prepare(self, example: dict) -> dict:
    if "segmentation" not in example:
      raise ValueError(f"Training example {example.get('key', '')!r} has no 'segmentation' map.")
    where = f"training example {example.get('key', '')!r}"
    return {"segmentation": self.class_fractions(example["segmentation"], where)}

  def request_inputs(self, request: dict, num: int) -> dict:
    if "segmentation" not in request:
      raise ValueError(f"This model is conditioned on a segmentation map: give 'segmentation' int [B, H, W] "
                       f"(class ids 0..{self.channels - 1}, at the image's size).")
    maps = check_batch("segmentation", request["segmentation"], num, "segmentation maps [B, H, W]")
    if maps.ndim != 3:
      raise ValueError(f"Sampling request 'segmentation' has shape {maps.shape}; expected class ids [B, H, W].")
    return {"segmentation": self.class_fractions(maps, "sampling request")}
