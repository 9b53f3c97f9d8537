"""The FID InceptionV3 weights file <-> our InceptionV3 params.

The standard file is pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the TensorFlow 2015-12-05 graph
converted to a torchvision-style state dict; torch-fidelity ships the same tensors as
`weights-inception-2015-12-05-6726825d.pth`). Nothing is downloaded: pass a local path (.pth needs torch to
read; a .safetensors export of the same state dict, see `save_inception`, does not).
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from latent_diffusion.models.inception import InceptionV3
from latent_diffusion.weights import files
from latent_diffusion.weights.mapping import Rule, export_params, import_params

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
# Our leaf name -> (torch tensor name, layout).
_LEAVES = {"kernel": ("weight", "conv"), "scale": ("weight", "copy"), "bias": ("bias", "copy"),
           "mean": ("running_mean", "copy"), "var": ("running_var", "copy")}


def abstract_params(module: InceptionV3) -> dict:
  return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))["params"]


def rules(module: InceptionV3) -> list[Rule]:
  """One rule per parameter, by name: 'Mixed_6b/branch7x7_2/conv/kernel' <-> 'Mixed_6b.branch7x7_2.conv.weight'."""
  out = []
  for path in traverse_util.flatten_dict(nn.unbox(abstract_params(module))):
    name, layout = _LEAVES[path[-1]]
    layout = "linear" if path == ("fc", "kernel") else layout
    out.append(Rule(path, ".".join(path[:-1] + (name,)), layout))
  return out


def load_inception(path: str | pathlib.Path, dtype=jnp.float32) -> tuple[InceptionV3, dict]:
  """(module, float32 numpy params) from the FID Inception weights file at `path` (.pth or .safetensors)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"FID Inception weights not found at {path}. Evaluation reads them from a local file only: download "
        f"{WEIGHTS_FILE} once from {WEIGHTS_URL} (pytorch-fid's release; torch-fidelity's "
        f"weights-inception-2015-12-05-6726825d.pth holds the same tensors) and set the evaluator's "
        f"config.evaluate.inception.weights to its path.")
  module = InceptionV3(dtype=dtype)
  state = files.read_checkpoint(path)
  params = import_params(state, rules(module), abstract_params(module), source=str(path),
                         ignore=lambda key: key.endswith("num_batches_tracked"))
  return module, params


def save_inception(params: dict, path: str | pathlib.Path) -> None:
  """Writes `params` as the standard state dict: .safetensors (torch-free) or, with torch, .pth."""
  tensors = export_params(params, rules(InceptionV3()))
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    files.write_safetensors(tensors, path)
    return
  import torch  # pylint: disable=import-outside-toplevel
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, path)
