"""Our FID InceptionV3 and resize conventions equal pytorch-fid's and torch-fidelity's, on random weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from latent_diffusion.evaluation import resizing
from latent_diffusion.models.inception import InceptionV3
from latent_diffusion.weights import inception as inception_weights
from latent_diffusion.weights.mapping import WeightImportError


def relative_error(ours, ref) -> float:
  return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def random_inception_params(seed: int = 0) -> dict:
  """He-normal kernels and random BatchNorm statistics: activations keep their scale through the network."""
  rng = np.random.default_rng(seed)
  draw = {"scale": lambda shape: rng.uniform(0.8, 1.2, shape), "bias": lambda shape: rng.normal(0.0, 0.1, shape),
          "mean": lambda shape: rng.normal(0.0, 0.1, shape), "var": lambda shape: rng.uniform(0.8, 1.2, shape),
          "kernel": lambda shape: rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)}
  abstract = nn.unbox(inception_weights.abstract_params(InceptionV3()))
  return jax.tree_util.tree_map_with_path(lambda path, leaf: draw[path[-1].key](leaf.shape).astype(np.float32),
                                          abstract)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """(our params, path of the same weights as the standard .pth state dict)."""
  params = random_inception_params()
  path = tmp_path_factory.mktemp("inception") / inception_weights.WEIGHTS_FILE
  inception_weights.save_inception(params, path)
  return params, path


@pytest.fixture(scope="module")
def network(weights):
  """jit(images [B, 299, 299, 3] in [-1, 1]) -> InceptionOutput with the weights loaded from the file."""
  module, params = inception_weights.load_inception(weights[1])
  return jax.jit(lambda x: module.apply({"params": params}, x))


@pytest.fixture(scope="module")
def images_uint8():
  """Three different 64 x 48 pictures: coarse random colour blocks (upsampled 8x) plus noise."""
  rng = np.random.default_rng(1)
  blocks = rng.uniform(0, 255, (3, 8, 6, 3))
  pictures = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2) + rng.normal(0, 20, (3, 64, 48, 3))
  return np.clip(pictures, 0, 255).astype(np.uint8)


def assert_features_match(ours, ref, tolerance: float = 1e-4):
  """Relative error of the features and of their deviations from the batch mean (what tells images apart)."""
  assert relative_error(ours, ref) <= tolerance
  centered = ref - ref.mean(axis=0)
  assert np.linalg.norm(centered) > 0.05 * np.linalg.norm(ref)  # the images do give different features
  assert relative_error(np.asarray(ours) - np.asarray(ours).mean(axis=0), centered) <= 10 * tolerance


def test_loads_the_file_it_saved_exactly(weights):
  params, path = weights
  _, loaded = inception_weights.load_inception(path)
  for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(ours, theirs)


def test_pool3_features_match_pytorch_fid(weights, network, images_uint8, monkeypatch):
  import torch
  from pytorch_fid import inception as pytorch_fid_inception

  # pytorch-fid fetches its weights by URL: hand it the same local file instead.
  monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                      lambda url, progress=True: torch.load(weights[1]))
  reference = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  images = images_uint8.astype(np.float32) / 255.0
  with torch.no_grad():
    ref = reference(torch.from_numpy(images).permute(0, 3, 1, 2))[0][:, :, 0, 0].numpy()
  ours = network(resizing.to_inception_input(images, "pytorch_fid")).pool3
  assert_features_match(ours, ref)


def test_features_and_logits_match_torch_fidelity(weights, network, images_uint8):
  import torch
  from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

  reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased", "logits"],
                                          feature_extractor_weights_path=str(weights[1]))
  with torch.no_grad():
    pool3, unbiased, logits = (t.numpy() for t in reference(torch.from_numpy(images_uint8).permute(0, 3, 1, 2)))
  ours = network(resizing.to_inception_input(images_uint8 / 255.0, "torch_fidelity"))
  assert_features_match(ours.pool3, pool3)
  assert_features_match(ours.logits_unbiased, unbiased)
  assert_features_match(ours.logits, logits)


@pytest.mark.parametrize("in_size", [(64, 48), (512, 400)])  # upsampling and (antialiased) downsampling
def test_resize_conventions_match_their_tools(in_size):
  import torch
  import torch.nn.functional as F
  from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

  images = np.random.default_rng(2).uniform(0, 255, (2, *in_size, 3)).astype(np.float32)
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
  size = (resizing.INCEPTION_SIZE, resizing.INCEPTION_SIZE)
  references = {
      "torch_bilinear": F.interpolate(nchw, size=size, mode="bilinear", align_corners=False),
      "tf1_bilinear": interpolate_bilinear_2d_like_tensorflow1x(nchw, size=size, align_corners=False),
  }
  for kind, ref in references.items():
    ours = resizing.resize(jnp.asarray(images), size, kind)
    assert relative_error(ours, ref.permute(0, 2, 3, 1).numpy()) <= 1e-6, kind
  # clean-fid's resize: PIL bicubic of each channel in float mode.
  pil = np.stack([np.stack([np.asarray(Image.fromarray(image[..., c], mode="F").resize(size, Image.BICUBIC))
                            for c in range(3)], axis=-1) for image in images])
  assert relative_error(resizing.resize(jnp.asarray(images), size, "pil_bicubic"), pil) <= 1e-6


def test_missing_weights_file_names_it_and_where_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth.*github\.com/mseitzer"):
    inception_weights.load_inception(tmp_path / "nowhere" / inception_weights.WEIGHTS_FILE)


def test_wrong_weights_file_lists_the_mismatch(weights, tmp_path):
  import torch
  state = torch.load(weights[1])
  del state["Mixed_7c.branch_pool.conv.weight"]
  torch.save(state, tmp_path / "broken.pth")
  with pytest.raises(WeightImportError, match=r"Mixed_7c\.branch_pool\.conv\.weight"):
    inception_weights.load_inception(tmp_path / "broken.pth")


def test_inception_network_of_the_evaluation_reads_the_config(weights, network, images_uint8):
  """The 'inception' network (config.evaluate.inception: file, convention) gives the model's outputs."""
  import jax

  from latent_diffusion import parallel
  from latent_diffusion.evaluation import networks, runner
  from latent_diffusion.evaluation.sources import Batch
  from tests.conftest import tiny_config

  config = tiny_config(f"evaluate.inception.weights={weights[1]}", "evaluate.inception.resize=clean_fid",
                       "sample.batch_size=3")
  ctx = runner.EvalContext(config, weights[1].parent, parallel.make_mesh(config.mesh), None, None, 1)
  images = images_uint8 / 255.0
  outputs = networks.NETWORKS["inception"](ctx).outputs(Batch(jax.device_put(images, ctx.sharding), None, 3))
  expected = network(resizing.to_inception_input(images, "clean_fid"))
  assert relative_error(outputs["pool3"], np.asarray(expected.pool3)) <= 1e-5
  assert relative_error(outputs["logits_unbiased"], np.asarray(expected.logits_unbiased)) <= 1e-5
