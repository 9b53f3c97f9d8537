"""Two real digits side by side, captioned in words: a text-to-image task with exact ground truth.

Each image is two of scikit-learn's handwritten digits (the same stratified split as
latent_diffusion.data.digits) at S x S, left and right: [S, 2S, 1] in [-1, 1]. Its caption says which
digit is where, from templates that name the digits in words or numerals and in either order
("a three on the left and a seven on the right", "seven to the right of three", "3 then 7"). Some
ordered pairs and some templates are held out of training, so an evaluation can ask whether a model
composes what it learned (a pair it never saw) and understands the sentence (a template it never saw).
Everything is deterministic: example i of a split is drawn from a generator seeded by (seed, split, i).
"""

import functools

import grain
import numpy as np

from latent_diffusion.data.digits import SPLITS, load_digits_split

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {l} / {r}: the left / right digit in words; {L} / {R}: as numerals.
TRAIN_TEMPLATES = (
    "a {l} on the left and a {r} on the right",
    "{r} to the right of {l}",
    "{L} then {R}",
    "the digits {l} and {r}",
    "{l} next to {r}",
    "left {l}, right {r}",
)
HELDOUT_TEMPLATES = (
    "a {r} on the right and a {l} on the left",
    "{l} to the left of {r}",
    "{L} and then {R}",
)
NUM_PAIRS = 100


def caption(template: str, left: int, right: int) -> str:
  return template.format(l=WORDS[left], r=WORDS[right], L=left, R=right)


@functools.lru_cache(maxsize=4)
def heldout_pairs(count: int, seed: int = 0) -> tuple[tuple[int, int], ...]:
  """`count` ordered (left, right) pairs never shown in training, fixed by `seed`; every digit still
  appears on both sides among the training pairs."""
  rng = np.random.default_rng(seed)
  while True:
    chosen = sorted(int(i) for i in rng.choice(NUM_PAIRS, count, replace=False))
    pairs = tuple((i // 10, i % 10) for i in chosen)
    seen = [(i // 10, i % 10) for i in range(NUM_PAIRS) if (i // 10, i % 10) not in pairs]
    if {l for l, _ in seen} == {r for _, r in seen} == set(range(10)):
      return pairs


def train_pairs(heldout: int, seed: int = 0) -> tuple[tuple[int, int], ...]:
  held = set(heldout_pairs(heldout, seed))
  return tuple((i // 10, i % 10) for i in range(NUM_PAIRS) if (i // 10, i % 10) not in held)


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
  """[S, S, 1] + [S, S, 1] -> [S, 2S, 1]."""
  return np.concatenate([left, right], axis=1)


class _PairExample(grain.transforms.Map):
  """Index -> {'image' [S, 2S, 1], 'caption', 'label' int32 [2] (left, right digit)}."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, pairs, templates, seed: int):
    self.by_class = [images[labels == c] for c in range(10)]
    self.pairs, self.templates, self.seed = pairs, templates, seed

  def map(self, index: int) -> dict:
    rng = np.random.default_rng((self.seed, int(index)))
    left, right = self.pairs[rng.integers(len(self.pairs))]
    template = self.templates[rng.integers(len(self.templates))]
    image = compose(self.by_class[left][rng.integers(len(self.by_class[left]))],
                    self.by_class[right][rng.integers(len(self.by_class[right]))])
    return {"image": image, "caption": caption(template, left, right), "label": np.array([left, right], np.int32)}


def make_digit_pairs_dataset(data_config, split: str) -> grain.MapDataset:
  """Examples {'image': float32 [S, 2S, 1] in [-1, 1], 'caption': str, 'label': int32 [2]} of the training
  pairs and templates (config.data.digit_pairs): `examples` of them for 'train', val_examples for 'val'
  (digits of the validation split)."""
  size, options = data_config.image_size, data_config.digit_pairs
  if data_config.image_width != 2 * size:
    raise ValueError(f"digit_pairs images are {size} x {2 * size}: set config.data.image_width={2 * size} "
                     f"(got {data_config.image_width}).")
  images, labels = load_digits_split(split, size, data_config.val_examples)
  count = options.examples if split == "train" else data_config.val_examples
  pairs = train_pairs(options.heldout_pairs, options.seed)
  example = _PairExample(images, labels, pairs, TRAIN_TEMPLATES, seed=options.seed * 2 + SPLITS.index(split))
  return grain.MapDataset.range(count).map(example)
