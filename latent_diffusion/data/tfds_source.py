"""A prepared TFDS image data set (e.g. 'imagenet2012') read by random access from its ArrayRecord files.

One split of a data set that `tfds build` (or `download_and_prepare`) has already written with
file_format='array_record' is read through `builder.as_data_source`, as `tfds.data_source(...,
download=False)` does, once the builder is checked (prepared, ArrayRecord, features, split) so that
each problem gets its own message. The image feature is left encoded (SkipDecoding), so
records carry the stored JPEG/PNG bytes and go through the same DecodeImage/ResizeCrop transforms as
the tar-shard and class-folder sources. Nothing is ever downloaded or prepared here.

The order is the one TFDS fixed when preparing (examples shuffled by key hash), the same in every
process, so each process can take its slice (`dataset[process_index::process_count]`).
"""

import os

import numpy as np
import tensorflow_datasets as tfds

def _not_prepared(name: str, data_dir: str | None, builder=None) -> FileNotFoundError:
  """The error for a data set absent from `data_dir`, with the builder's manual download steps if it has any."""
  where = data_dir or "the default TFDS data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  return FileNotFoundError(
      f"TFDS data set {name!r} is not prepared under {where}. TfdsSource downloads nothing: prepare it beforehand "
      f"with `tfds build {name} --data_dir=<data_dir> --file_format=array_record` (or "
      "builder.download_and_prepare(file_format='array_record'))."
      + (f" It needs a manual download into <data_dir>/downloads/manual first:\n{manual.strip()}" if manual else ""))


def _prepared_builder(name: str, data_dir: str | None):
  """The TFDS builder of `name` with its files present under `data_dir`, else FileNotFoundError."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:  # neither registered nor found on disk; its message lists every data set
    raise _not_prepared(name, data_dir) from None
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, builder)
  return builder


class TfdsSource:
  """grain RandomAccessDataSource over one split of a prepared TFDS image data set (ArrayRecord files).

  name: TFDS name, optionally with config and version ('imagenet2012', 'imagenet2012:5.1.0');
  split: a TFDS split spec ('train', 'validation[:1000]', 'train+validation'); data_dir: where it was
  prepared (None: TFDS's default); image_key: the tfds.features.Image feature; label_key: a
  tfds.features.ClassLabel feature, or None for data sets without labels; caption_key: a tfds.features.Text
  feature holding the caption (e.g. COCO-style captioned sets), else the class name is the caption.

  Record i: {'key': the example's 'file_name' feature if it has one, else f'{split}/{i}',
  'image_bytes': the stored encoded image, 'caption': the caption_key text, else the class name (label_key's
  ClassLabel name), else None, 'metadata': {}, 'label': int32 (with label_key)}.
  Picklable: the TFDS data source pickles its split's file instructions and reopens the files.
  """

  def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, image_key: str = "image",
               label_key: str | None = "label", caption_key: str | None = None):
    if not name:
      raise ValueError("TfdsSource needs a TFDS data set name such as 'imagenet2012' or 'imagenet2012:5.1.0' "
                       "(config.data.tfds_name).")
    self.name, self.split, self.image_key, self.label_key = name, split, image_key, label_key
    self.caption_key = caption_key
    data_dir = None if data_dir is None else os.fspath(data_dir)
    builder = _prepared_builder(name, data_dir)
    formats = builder.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
      raise ValueError(
          f"TFDS data set {name!r} under {builder.data_dir} is stored as {sorted(f.value for f in formats)}, not "
          "ArrayRecord, which random access needs: re-prepare it with file_format='array_record' (e.g. `tfds build "
          f"{name} --file_format=array_record` into another data_dir).")
    features = dict(builder.info.features.items())
    for key, kind in ((image_key, tfds.features.Image), (label_key, tfds.features.ClassLabel),
                      (caption_key, tfds.features.Text)):
      if key is not None and not isinstance(features.get(key), kind):
        raise ValueError(f"TFDS data set {name!r} has no {kind.__name__} feature {key!r}; its features: "
                         f"{ {k: type(f).__name__ for k, f in features.items()} }.")
    names = {part.split("[")[0].strip() for part in split.split("+")}  # 'train[:10%]+validation' -> both names
    if not names <= set(builder.info.splits):
      raise ValueError(f"TFDS data set {name!r} has no split {split!r}; "
                       f"available splits: {sorted(builder.info.splits)}.")
    self.classes = list(features[label_key].names) if label_key is not None else []
    self._has_file_name = "file_name" in features
    self._records = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self.classes)} classes, {len(self)} examples)"

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    example = self._records[index]
    key = example["file_name"].decode("utf-8") if self._has_file_name else f"{self.split}/{index}"
    record = {"key": key, "image_bytes": example[self.image_key], "caption": None, "metadata": {}}
    if self.label_key is not None:
      label = np.int32(example[self.label_key])
      record.update(label=label, caption=self.classes[label])
    if self.caption_key is not None:
      text = example[self.caption_key]
      record["caption"] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    return record
