"""Input pipelines (grain) by name.

A data set is a finite, ordered grain MapDataset of example dicts; the training loop adds the
per-process slice, the seeded shuffle, the repetition and the batching.
"""

import grain
import numpy as np

from latent_diffusion.data.digits import load_digits_split, make_digits_dataset


def from_arrays(arrays: dict[str, np.ndarray]) -> grain.MapDataset:
  """Examples {name: array[i]} of equally long arrays."""
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"Arrays of different lengths: {lengths}.")
  return grain.MapDataset.source(np.arange(next(iter(lengths.values())))).map(
      lambda i: {name: a[i] for name, a in arrays.items()})


# Data set name -> fn(data_config, split) returning a finite grain MapDataset of example dicts.
DATASETS = {"digits": make_digits_dataset}


def make_dataset(data_config, split: str) -> grain.MapDataset:
  """The grain dataset named by `data_config.name` for `split` ('train' or 'val')."""
  if data_config.name not in DATASETS:
    raise ValueError(f"Unknown data set {data_config.name!r} (config.data.name); known: {sorted(DATASETS)}.")
  return DATASETS[data_config.name](data_config, split)
