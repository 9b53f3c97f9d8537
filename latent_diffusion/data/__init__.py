"""Input pipelines (grain) by name.

A data set is a finite, ordered grain MapDataset of example dicts; the training loop adds the
per-process slice, the seeded shuffle, the repetition and the batching.
"""

import grain
import numpy as np

from latent_diffusion.data import images
from latent_diffusion.data.digit_pairs import make_digit_pairs_dataset
from latent_diffusion.data.digits import SPLITS, load_digits_split, make_digits_dataset
from latent_diffusion.data.image_folder import ImageFolderSource
from latent_diffusion.data.photos import make_photo_crops_dataset
from latent_diffusion.data.sample_photos import make_sample_photos_dataset
from latent_diffusion.data.shapes import make_shapes_dataset
from latent_diffusion.data.tar_shards import TarShardSource
from latent_diffusion.data.tfds_source import TfdsSource


def from_arrays(arrays: dict[str, np.ndarray]) -> grain.MapDataset:
  """Examples {name: array[i]} of equally long arrays."""
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"Arrays of different lengths: {lengths}.")
  return grain.MapDataset.source(np.arange(next(iter(lengths.values())))).map(
      lambda i: {name: a[i] for name, a in arrays.items()})


# Image data set name -> fn(path of one split, data_config) returning a record source.
IMAGE_SOURCES = {
    "tar_shards": lambda path, cfg: TarShardSource(path, cache_dir=cfg.index_cache_dir),
    "image_folder": lambda path, cfg: ImageFolderSource(path),
    # path: the TFDS split spec (e.g. 'validation[:1000]') of the prepared data set cfg.tfds_name.
    "tfds": lambda path, cfg: TfdsSource(cfg.tfds_name, path, data_dir=cfg.tfds_data_dir,
                                         caption_key=cfg.tfds_caption_key),
}


def make_image_dataset(data_config, split: str) -> grain.MapDataset:
  """Photos from `data_config.{split}_path`: a shard pattern ('tar_shards', e.g.
  'laion/{00000..00127}.tar'), a class-folder root ('image_folder') or a TFDS split spec ('tfds',
  e.g. 'validation[:1000]', with data_config.tfds_name and tfds_data_dir; ArrayRecord format).

  Examples {'image': float32 [S, S, 3] in [-1, 1], 'caption', 'key', 'label' (image_folder, tfds)}, transformed
  by data_config.crop ('center' | 'random'), flip, min_size, max_aspect_ratio and seed (configs/base.py).
  Undecodable or filtered records are dropped and counted (see latent_diffusion.data.images).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  path = data_config[f"{split}_path"]
  if not path:
    raise ValueError(f"config.data.{split}_path is not set: data set {data_config.name!r} reads split {split!r} "
                     "from it (a shard pattern for 'tar_shards', a class-folder root for 'image_folder', a split "
                     "spec for 'tfds').")
  source = IMAGE_SOURCES[data_config.name](path, data_config)
  return images.image_dataset(
      source, image_size=data_config.image_size, crop=data_config.crop, flip=data_config.flip, seed=data_config.seed,
      min_size=data_config.min_size, max_aspect_ratio=data_config.max_aspect_ratio,
      skips=images.SkipCounter(f"{data_config.name}/{split}"), text=True)


# Data set name -> fn(data_config, split) returning a finite grain MapDataset of example dicts.
DATASETS = {"digits": make_digits_dataset, "digit_pairs": make_digit_pairs_dataset, "shapes": make_shapes_dataset,
            "photo_crops": make_photo_crops_dataset, "sample_photos": make_sample_photos_dataset,
            **{name: make_image_dataset for name in IMAGE_SOURCES}}


def image_shape(data_config) -> tuple[int, int]:
  """(height, width) in pixels of the images of config.data."""
  return data_config.image_size, data_config.image_width or data_config.image_size


def make_dataset(data_config, split: str) -> grain.MapDataset:
  """The grain dataset named by `data_config.name` for `split` ('train' or 'val')."""
  if data_config.name not in DATASETS:
    raise ValueError(f"Unknown data set {data_config.name!r} (config.data.name); known: {sorted(DATASETS)}.")
  return DATASETS[data_config.name](data_config, split)
