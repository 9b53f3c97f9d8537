"""Importing the PyTorch reference packages (pytorch-fid, torch-fidelity) beside the CPU build of torch.

PyPI's torchvision wheel is built against CUDA torch: with torch's CPU build its C++ ops (nms, roi_align, ...)
do not load, and torchvision 0.28's import then fails registering fake kernels for `torchvision::nms` and
`torchvision::qnms`. Declaring those two operator schemas first lets it import; the references only use its
Inception building blocks, never those ops. With a matching torchvision build nothing is changed.
"""

import functools
import importlib.util
import pathlib


@functools.cache
def import_torchvision():
  import torch

  package = pathlib.Path(importlib.util.find_spec("torchvision").origin).parent
  try:
    torch.ops.load_library(str(next(package.glob("_C*.so"))))
  except (OSError, StopIteration):
    library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
      library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP_ALIVE.append(library)  # the schemas live as long as the Library object
  import torchvision
  return torchvision


_KEEP_ALIVE = []
