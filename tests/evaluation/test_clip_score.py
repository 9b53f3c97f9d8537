"""CLIP score: our CLIP towers and projections equal transformers' CLIPModel on a tiny random config; the
'clip' network scores class-conditional samples as 100 * max(cos, 0) against their class prompts."""

import jax
import numpy as np
import pytest
import torch
import transformers

from latent_diffusion import parallel
from latent_diffusion.evaluation import clip_score, runner
from latent_diffusion.evaluation.sources import Batch
from latent_diffusion.weights import tokenization
from latent_diffusion.weights.clip import load_clip_model
from latent_diffusion.weights.mapping import WeightImportError
from tests.conftest import tiny_config
from tests.text_fixtures import tiny_clip_text_config, tiny_vocab_size, write_tiny_clip_tokenizer


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
  """(folder, torch CLIPModel): a 2-layer random CLIPModel (32x32 images, 8x8 patches) and its tokenizer."""
  folder = tmp_path_factory.mktemp("clip")
  torch.manual_seed(0)
  vision = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4)
  config = transformers.CLIPConfig(text_config=tiny_clip_text_config(tiny_vocab_size()).to_dict(),
                                   vision_config=vision.to_dict(), projection_dim=16)
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(folder)
  write_tiny_clip_tokenizer(folder)
  return folder, model


def relative_error(ours, ref) -> float:
  return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def test_embeddings_and_score_match_transformers(clip_folder):
  folder, model = clip_folder
  weights = load_clip_model(folder)
  pixels = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  ids = tokenization.tokenize(tokenization.load_tokenizer(folder), ["the cat", "a dog on the mat", "cat"])
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
  ours_images = clip_score.image_embeddings(weights, weights.vision_params, pixels)
  ours_texts = clip_score.text_embeddings(weights, ids)
  assert relative_error(ours_images, out.image_embeds.numpy()) <= 1e-5
  assert relative_error(ours_texts, out.text_embeds.numpy()) <= 1e-5
  reference = 100.0 * np.maximum(np.sum(out.image_embeds.numpy() * out.text_embeds.numpy(), axis=1), 0.0)
  assert reference.max() > 1.0
  np.testing.assert_allclose(clip_score.clip_scores(ours_images, ours_texts), reference, rtol=1e-4, atol=1e-4)


def test_clip_network_scores_samples_against_their_class_prompts(clip_folder):
  folder, model = clip_folder
  config = tiny_config(f"evaluate.clip.folder={folder}", "data.image_size=32")
  mesh = parallel.make_mesh(config.mesh)
  ctx = runner.EvalContext(config, folder, mesh, None, None, 1)
  network = clip_score.clip_network(ctx)
  images = np.random.default_rng(1).uniform(size=(4, 32, 32, 1)).astype(np.float32)
  labels = np.array([0, 3, 3, 9])
  batch = Batch(jax.device_put(images, ctx.sharding), np.arange(4), 4, labels)
  scores = network.outputs(batch)["score"]

  tokenizer = tokenization.load_tokenizer(folder)
  prompts = [config.evaluate.clip.prompt.format(config.evaluate.clip.class_names[c]) for c in labels]
  pixel_values = (np.repeat(images, 3, axis=-1) - clip_score.OPENAI_CLIP_MEAN) / clip_score.OPENAI_CLIP_STD
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokenization.tokenize(tokenizer, prompts)).long(),
                pixel_values=torch.from_numpy(pixel_values.astype(np.float32)).permute(0, 3, 1, 2))
  reference = 100.0 * np.maximum(np.sum(out.image_embeds.numpy() * out.text_embeds.numpy(), axis=1), 0.0)
  np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4)


def test_missing_or_wrong_clip_folder_says_what(tmp_path, clip_folder):
  ctx = runner.EvalContext(tiny_config(), tmp_path, parallel.make_mesh(tiny_config().mesh), None, None, 1)
  with pytest.raises(FileNotFoundError, match="config.evaluate.clip.folder is not set"):
    clip_score.clip_network(ctx)
  with pytest.raises(FileNotFoundError, match="CLIPModel config.json not found"):
    load_clip_model(tmp_path / "no_such_folder")
  text_only = tmp_path / "text_only"
  transformers.CLIPTextModel(tiny_clip_text_config(tiny_vocab_size())).save_pretrained(text_only)
  with pytest.raises(WeightImportError, match="model_type='clip_text_model'"):
    load_clip_model(text_only)
