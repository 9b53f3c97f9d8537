"""LPIPS against the `lpips` package (PyTorch) with randomised VGG16 weights and the package's real v0.1 heads."""

import jax
import numpy as np
import pytest
import torch

from latent_diffusion.models.lpips import LPIPS, load_lpips_params
from latent_diffusion.weights import files
from latent_diffusion.weights.mapping import WeightImportError


def relative_error(ours, reference) -> float:
  return float(np.linalg.norm(np.asarray(ours) - reference) / np.linalg.norm(reference))


def test_distances_equal_the_lpips_package(random_lpips):
  reference, vgg_path, heads_path = random_lpips
  params = load_lpips_params(vgg_path, heads_path)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (3, 36, 44, 3)).astype(np.float32)   # odd stage sizes exercise the pools' flooring
  x1 = np.clip(x0 + rng.normal(0, 0.3, x0.shape), -1, 1).astype(np.float32)
  ours = jax.jit(LPIPS().apply)({"params": params}, x0, x1)
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x0).permute(0, 3, 1, 2), torch.from_numpy(x1).permute(0, 3, 1, 2))
  theirs = theirs.numpy().reshape(-1)
  assert theirs.min() > 0.01                                   # distances of different images, not ~0
  assert relative_error(ours, theirs) <= 1e-5, (ours, theirs)
  np.testing.assert_allclose(jax.jit(LPIPS().apply)({"params": params}, x0, x0), 0.0, atol=1e-7)


def test_missing_or_unset_random_lpips_say_what_to_provide(random_lpips, tmp_path):
  _, vgg_path, heads_path = random_lpips
  with pytest.raises(FileNotFoundError, match="torchvision VGG16 ImageNet state dict.*lpips.vgg_path.*Nothing is "):
    load_lpips_params(None, heads_path)
  with pytest.raises(FileNotFoundError, match="LPIPS heads weights: the lpips v0.1 VGG linear heads.*not found: "
                                              ".*absent.pth.*nothing is downloaded"):
    load_lpips_params(vgg_path, tmp_path / "absent.pth")


def test_wrong_shapes_and_missing_tensors_are_listed(random_lpips, tmp_path):
  _, vgg_path, heads_path = random_lpips
  trunk = files.read_checkpoint(vgg_path)
  trunk["features.28.weight"] = trunk["features.28.weight"][:256]     # a VGG with a narrower last conv
  del trunk["features.0.bias"]
  broken = tmp_path / "broken_vgg.safetensors"
  files.write_safetensors({k: np.ascontiguousarray(v) for k, v in trunk.items()}, broken)
  with pytest.raises(WeightImportError, match=r"(?s)missing keys \(1\):\s+features\.0\.bias.*shape mismatches "
                                              r"\(1\):\s+features\.28\.weight: checkpoint \(256, 512, 3, 3\)"):
    load_lpips_params(broken, heads_path)
  with pytest.raises(WeightImportError, match=r"(?s)missing keys \(5\).*lin0.model.1.weight"):
    load_lpips_params(vgg_path, vgg_path)                           # the trunk given as the heads file
