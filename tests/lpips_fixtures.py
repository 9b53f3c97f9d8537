"""LPIPS with a random VGG16 trunk and the real v0.1 heads, as the `lpips` package (reference) and as weight files."""

import pathlib

import torch

import lpips as lpips_reference

HEADS = pathlib.Path(lpips_reference.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def random_vgg_reference(seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
  """(lpips.LPIPS with a random VGG16 trunk and the real heads, the trunk as a torchvision state dict)."""
  torch.manual_seed(seed)
  reference = lpips_reference.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
  trunk = {}
  for name, tensor in reference.net.named_parameters():      # 'slice<k>.<features index>.weight|bias'
    with torch.no_grad():
      if name.endswith("bias"):
        tensor.normal_(0.0, 0.1)                               # torchvision starts biases at 0: make them count
    trunk["features." + name.split(".", 1)[1]] = tensor.detach().clone()
  return reference, trunk


def write_random_vgg(folder: pathlib.Path, seed: int = 0) -> tuple[torch.nn.Module, pathlib.Path]:
  """(the reference module, its trunk saved as folder/vgg16.pth, with a torchvision file's classifier key)."""
  reference, trunk = random_vgg_reference(seed)
  trunk["classifier.0.weight"] = torch.zeros(4, 4)
  torch.save(trunk, folder / "vgg16.pth")
  return reference, folder / "vgg16.pth"
