"""LPIPS (Zhang et al. 2018), v0.1 with the VGG16 trunk: the perceptual distance of LDM's stage-1 loss (NHWC).

d(x0, x1) = sum over the five VGG16 stages l of mean over positions of w_l . (f0_l - f1_l)^2, where f_l are
the relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 activations of the shifted and scaled inputs, each
normalised to unit length over channels, and w_l the non-negative linear heads calibrated on human
judgements ('lin0'..'lin4' of the `lpips` package's weights/v0.1/vgg.pth).

Weights load from two local files (`load_lpips_params`): a torchvision VGG16 state dict
(`vgg16-397923af.pth`, keys 'features.<i>.weight|bias') and the lpips v0.1 heads; .pth or .safetensors.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.weights import files, mapping

# Output widths of the VGG16 convolutions, one tuple per stage; stages 2-5 start with a 2x2 max pool.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# The lpips ScalingLayer: inputs in [-1, 1] -> (x - shift) / scale, per RGB channel.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _conv_name(stage: int, index: int) -> str:
  return f"conv{stage + 1}_{index + 1}"


class VGG16Features(nn.Module):
  """torchvision's vgg16().features up to relu5_3: [B, H, W, 3] -> the five stage outputs (after ReLU)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outputs = []
    for stage, widths in enumerate(VGG16_STAGES):
      if stage:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))   # floors odd sizes, as torch's MaxPool2d(2, 2)
      for index, width in enumerate(widths):
        x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            name=_conv_name(stage, index))(x))
      outputs.append(x)
    return outputs


def _unit_normalize(features: jax.Array, eps: float = 1e-10) -> jax.Array:
  """features / (||features||_2 over channels + eps), lpips.normalize_tensor."""
  return features / (jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
  """LPIPS v0.1 distance between image batches [B, H, W, 3] in [-1, 1] -> [B] (float32).

  One-channel images are compared as grey RGB (repeated channels). Parameters: 'vgg' (VGG16Features)
  and the heads 'lin0'..'lin4' (1x1 convolutions to one channel, no bias).
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    if x0.shape != x1.shape or x0.shape[-1] not in (1, 3):
      raise ValueError(f"LPIPS compares two image batches of one shape [B, H, W, 1 or 3]; got {x0.shape} and "
                       f"{x1.shape}.")
    both = jnp.concatenate([x0, x1]).astype(jnp.float32)          # one trunk call for both batches
    both = jnp.broadcast_to(both, both.shape[:-1] + (3,))
    both = (both - jnp.asarray(_SHIFT)) / jnp.asarray(_SCALE)
    distance = 0.0
    for level, features in enumerate(VGG16Features(self.dtype, name="vgg")(both)):
      f0, f1 = jnp.split(_unit_normalize(features.astype(jnp.float32)), 2)
      head = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{level}")
      distance = distance + jnp.mean(head(jnp.square(f0 - f1)), axis=(1, 2, 3))
    return distance


def _rules() -> tuple[list[mapping.Rule], list[mapping.Rule]]:
  """(VGG16 trunk rules against torchvision's 'features.<i>', heads against lpips' 'lin<l>.model.1')."""
  trunk, position = [], 0
  for stage, widths in enumerate(VGG16_STAGES):
    position += 1 if stage else 0                      # the max pool
    for index in range(len(widths)):
      trunk += mapping.conv(f"vgg/{_conv_name(stage, index)}", f"features.{position}")
      position += 2                                    # conv + ReLU
  heads = [rule for level in range(len(VGG16_STAGES))
           for rule in mapping.conv(f"lin{level}", f"lin{level}.model.1", bias=False)]
  return trunk, heads


def abstract_params() -> dict:
  """The LPIPS parameter shapes (jax.ShapeDtypeStruct tree), without computing anything."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(LPIPS().init, jax.random.key(0), x, x)["params"]


def load_lpips_params(vgg_path: str | pathlib.Path | None, heads_path: str | pathlib.Path | None) -> dict:
  """LPIPS params (numpy float32) from a torchvision VGG16 state dict and the lpips v0.1 VGG heads.

  Raises FileNotFoundError naming the file to provide when a path is unset or absent, and
  WeightImportError listing missing / mis-shaped tensors when a file does not hold what it should.
  """
  what = {"vgg": ("the torchvision VGG16 ImageNet state dict (vgg16-397923af.pth, keys 'features.<i>.weight')",
                  vgg_path),
          "heads": ("the lpips v0.1 VGG linear heads (lpips/weights/v0.1/vgg.pth from the `lpips` pip package, keys "
                    "'lin<l>.model.1.weight')", heads_path)}
  for name, (description, path) in what.items():
    if not path:
      raise FileNotFoundError(f"LPIPS needs {description}: set config.autoencoder.lpips.{name}_path to a local file. "
                              "Nothing is downloaded.")
    files.require_file(path, f"LPIPS {name} weights: {description}")
  trunk, heads = _rules()
  expected = abstract_params()
  trunk_params = mapping.import_params(files.read_checkpoint(vgg_path), trunk, {"vgg": expected["vgg"]},
                                       source=f"VGG16 weights {vgg_path}",
                                       ignore=lambda key: key.startswith("classifier."))
  head_expected = {name: value for name, value in expected.items() if name != "vgg"}
  head_params = mapping.import_params(files.read_checkpoint(heads_path), heads, head_expected,
                                      source=f"LPIPS heads {heads_path}")
  return jax.tree.map(np.asarray, {**trunk_params, **head_params})
