"""ImageNet-style class folders (root/<class_name>/<file>.jpg) as a grain data source."""

import os
import pathlib

import numpy as np

# File name suffixes read as images (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageFolderSource:
  """grain RandomAccessDataSource over root/<class_name>/<image files>.

  Classes are the sorted sub-directory names, label = position in that list; files are in sorted
  order within a class, classes one after another. Record i: {'key': 'class/file', 'image_bytes',
  'image_format' (suffix without dot), 'caption': the text of a sidecar 'file.txt' next to the image if there is
  one, else the class name, 'metadata': {}, 'label': int32}.
  Picklable: holds only paths; files are opened per read.
  """

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise FileNotFoundError(f"Image folder root {str(self.root)!r} is not a directory.")
    self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not self.classes:
      raise ValueError(f"{str(self.root)!r} has no class sub-directories (expected root/<class_name>/*.jpg).")
    files, labels = [], []
    for label, name in enumerate(self.classes):
      images = sorted(f.name for f in (self.root / name).iterdir()
                      if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
      files += [f"{name}/{f}" for f in images]
      labels += [label] * len(images)
    if not files:
      raise ValueError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {str(self.root)!r}.")
    self._files = np.array(files, dtype=str)
    self._labels = np.array(labels, dtype=np.int32)
    self.skipped: dict[str, list[str]] = {}

  def __len__(self) -> int:
    return len(self._files)

  def __repr__(self) -> str:
    return f"ImageFolderSource({str(self.root)!r}, {len(self.classes)} classes, {len(self)} images)"

  def __getitem__(self, index: int) -> dict:
    key, label = str(self._files[int(index)]), self._labels[int(index)]
    sidecar = (self.root / key).with_suffix(".txt")
    caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else self.classes[label]
    return {"key": key, "image_bytes": (self.root / key).read_bytes(),
            "image_format": pathlib.PurePath(key).suffix[1:].lower(),
            "caption": caption, "metadata": {}, "label": label}
