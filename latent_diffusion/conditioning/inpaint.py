"""Inpainting as Stable-Diffusion-inpainting lays it out: the UNet reads x_t, the mask at the latent grid and the
latent of the masked image (4 + 1 + 4 = 9 channels for SD's VAE), so that 9-channel diffusers inpainting UNets
load, train and export unchanged.

Model inputs: 'image' float32 [B, H, W, C] in [-1, 1] (pixels) and 'mask' float32 [B, H, W, 1], 1 = to fill.
UNet `concat` = [mask at the latent grid (nearest: pixel (f i, f j), as diffusers' F.interpolate), scale *
E(image * (1 - mask))] with E the first stage's encoder (posterior mode; pre-quantization latent of a VQ model),
computed on device with the encoder's frozen parameters. Training batches hold images (and, with object masks,
the objects' boxes 'mask_boxes' [B, M, 4]): masks are drawn per step (latent_diffusion.conditioning.masks). The
masked image defines the task, so the null condition keeps it (guidance acts on other conditions, e.g. text).
With keep_known, sampling keeps the known region: latent cells whose pixels are all known follow
x0_known = scale * E(image) (diffusion.stepping.scan_steps). With paste_known, the sampled image takes the known
pixels from the input (mask * sample + (1 - mask) * image), as inpainting tools composite; diffusers' 9-channel
pipeline does neither.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.conditioning.base import Conditioner, check_batch
from latent_diffusion.conditioning.masks import MaskOptions, random_masks
from latent_diffusion.models.autoencoder import VQModel

# First-stage parameters the encoder side reads (the decoder's are not copied).
_ENCODER_PARTS = ("encoder", "quant_conv")


def first_stage_latent(autoencoder, params, images: jax.Array) -> jax.Array:
  """Unscaled latents [B, h, w, c] of images [B, H, W, C]: the KL posterior's mode, a VQ model's pre-quantization h."""
  encoded = autoencoder.apply({"params": params}, images, method=type(autoencoder).encode)
  return encoded if isinstance(autoencoder, VQModel) else encoded.mode()


def check_pixel_grid(what: str, shape: tuple, factor: int) -> tuple[int, int]:
  """The latent grid (H / f, W / f) of an image-shaped request input [B, H, W, ...], or ValueError naming its shape."""
  if len(shape) < 3 or shape[1] % factor or shape[2] % factor:
    raise ValueError(f"{what} has shape {tuple(shape)}; its height and width must be multiples of the autoencoder's "
                     f"factor {factor} (the image size in pixels).")
  return shape[1] // factor, shape[2] // factor


class InpaintConditioner(Conditioner):
  """See the module docstring. Bound to a first stage by with_first_stage (module, params, scale) before use."""
  name = "inpaint"
  reads_image = True

  def __init__(self, masks: MaskOptions = MaskOptions(), keep_known: bool = True, paste_known: bool = False,
               autoencoder=None, encoder_params=None, scale_factor: float | None = None):
    self.masks, self.keep_known, self.paste_known = masks, keep_known, paste_known
    self.autoencoder, self.encoder_params, self.scale_factor = autoencoder, encoder_params, scale_factor

  def with_first_stage(self, autoencoder, params, scale_factor):
    encoder_params = None if params is None else {k: nn.unbox(params[k]) for k in _ENCODER_PARTS if k in params}
    return InpaintConditioner(self.masks, self.keep_known, self.paste_known, autoencoder, encoder_params,
                              scale_factor)

  def _bound(self):
    if self.autoencoder is None:
      raise ValueError("The inpainting conditioner is not bound to a first stage (Conditioning.with_first_stage).")
    return self.autoencoder

  @property
  def factor(self) -> int:
    return self._bound().downsampling_factor

  @property
  def latent_channels(self) -> int:
    return self._bound().embed_dim

  @property
  def guided(self) -> bool:
    return False

  # --- host side -------------------------------------------------------------------------------
  def input_fields(self) -> tuple[str, ...]:
    return ("image", "mask")

  def batch_fields(self) -> tuple[str, ...]:
    return ("image", "mask_boxes") if self.masks.object_prob else ("image",)

  def prepare(self, example: dict) -> dict:
    key = example.get("key", "")
    if "image" not in example:
      raise ValueError(f"Training example {key!r} has no 'image' (inpainting trains on pixels: "
                       f"in-memory encoding keeps them; pre-encoded latent shards hold none).")
    prepared = {"image": np.asarray(example["image"], np.float32)}
    if self.masks.object_prob:
      if "boxes" not in example:
        raise ValueError(f"Training example {key!r} has no 'boxes', which object masks need "
                         f"(config.ldm.conditioning.inpaint.masks.object_prob = {self.masks.object_prob}): train on "
                         f"data with object boxes (e.g. data.name = 'shapes') or set object_prob to 0.")
      boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
      if "box_labels" in example:                                   # rows past the last object: no box
        boxes = np.where(np.asarray(example["box_labels"]).reshape(-1, 1) >= 0, boxes, 0.0)
      prepared["mask_boxes"] = boxes
    return prepared

  def request_inputs(self, request: dict, num: int) -> dict:
    missing = [name for name in ("image", "mask") if name not in request]
    if missing:
      raise ValueError(f"An inpainting model needs {missing} to sample: 'image' float [B, H, W, C] in [-1, 1] and "
                       f"'mask' [B, H, W] or [B, H, W, 1] (1 = to fill).")
    image = np.asarray(check_batch("image", request["image"], num, "image to inpaint"), np.float32)
    mask = np.asarray(check_batch("mask", request["mask"], num, "inpainting mask"), np.float32)
    mask = mask[..., None] if mask.ndim == 3 else mask
    channels = self._bound().in_channels
    if image.ndim != 4 or image.shape[-1] != channels:
      raise ValueError(f"Inpainting 'image' has shape {image.shape}; the model takes [B, H, W, {channels}] in [-1, 1].")
    if mask.shape != image.shape[:3] + (1,):
      raise ValueError(f"Inpainting 'mask' of shape {np.shape(request['mask'])} does not fit 'image' of shape "
                       f"{image.shape}: give [B, H, W] or [B, H, W, 1] at the image's size.")
    check_pixel_grid("Inpainting 'image'", image.shape, self.factor)
    return {"image": image, "mask": (mask >= 0.5).astype(np.float32)}

  def null_request_inputs(self, request: dict, num: int) -> dict:
    return self.request_inputs(request, num)

  def request_grid(self, inputs: dict) -> tuple[int, int]:
    return check_pixel_grid("Inpainting 'image'", inputs["image"].shape, self.factor)

  def example_inputs(self, batch_size: int, latent_shape) -> dict:
    h, w, _ = latent_shape
    pixels = (batch_size, h * self.factor, w * self.factor)
    return {"image": np.zeros(pixels + (self._bound().in_channels,), np.float32),
            "mask": np.zeros(pixels + (1,), np.float32)}

  # --- parameters ------------------------------------------------------------------------------
  def _abstract(self):
    from latent_diffusion.weights import autoencoder as autoencoder_weights

    full = autoencoder_weights.abstract_params(self._bound())
    return {"encoder": {k: full[k] for k in _ENCODER_PARTS if k in full},
            "scale_factor": nn.Partitioned(jax.ShapeDtypeStruct((), jnp.float32), names=())}

  def abstract_params(self) -> dict:
    return self._abstract()

  def frozen_params(self) -> dict:
    if self.encoder_params is None or self.scale_factor is None:
      raise ValueError("Inpainting needs the first stage's weights and latent scale (Conditioning.with_first_stage).")
    from latent_diffusion import parallel

    values = {"encoder": self.encoder_params, "scale_factor": jnp.float32(self.scale_factor)}
    return parallel.box_like(self._abstract(), values)

  # --- device side -----------------------------------------------------------------------------
  def train_inputs(self, batch: dict, rng) -> dict:
    image = batch["image"]
    boxes = batch["mask_boxes"] if self.masks.object_prob else None
    return {"image": image,
            "mask": random_masks(rng, image.shape[0], image.shape[1], image.shape[2], self.masks, boxes)}

  def unet_kwargs(self, params, inputs: dict) -> dict:
    image, mask = inputs["image"], inputs["mask"]
    f = self.factor
    masked = first_stage_latent(self._bound(), params["encoder"], image * (1.0 - mask))
    return {"concat": jnp.concatenate([mask[:, ::f, ::f], params["scale_factor"] * masked], axis=-1)}

  def null_unet_kwargs(self, params, inputs: dict) -> dict:
    return self.unet_kwargs(params, inputs)

  def sampler_kwargs(self, params, inputs: dict) -> dict:
    if not self.keep_known:
      return {}
    f = self.factor
    b, height, width, _ = inputs["mask"].shape
    cells = inputs["mask"].reshape(b, height // f, f, width // f, f, 1).max(axis=(2, 4))     # any pixel to fill
    x0_known = params["scale_factor"] * first_stage_latent(self._bound(), params["encoder"], inputs["image"])
    return {"mask": 1.0 - cells, "x0_known": x0_known}

  def pixels(self, decoded, inputs: dict):
    if not self.paste_known:
      return decoded
    mask = inputs["mask"].astype(decoded.dtype)
    return mask * decoded + (1.0 - mask) * inputs["image"].astype(decoded.dtype)


def mask_options(config) -> MaskOptions:
  """MaskOptions of config.ldm.conditioning.inpaint.masks."""
  options = dict(config.ldm.conditioning.inpaint.masks)
  return MaskOptions(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in options.items()})
