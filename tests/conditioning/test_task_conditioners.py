"""The task conditioners: inpainting's 9-channel input equals what diffusers' inpainting pipeline feeds its UNet
(mask by nearest interpolation, masked image through the VAE times its scale), the known region survives sampling,
segmentation maps at the latent grid, layouts' null = the encoder on the empty layout, and bad requests named
with their shapes or ids."""

import copy
import dataclasses

import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from latent_diffusion import conditioning, data, generation
from latent_diffusion.conditioning.inpaint import first_stage_latent
from latent_diffusion.training import ldm
from latent_diffusion.weights import pretrained
from tests import sd_pipelines
from tests.conftest import tiny_config
from tests.tasks.bundles import random_bundle


def rel_err(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def diffusers_vae(tmp_path_factory):
  """(torch AutoencoderKL f=4, folder) of a tiny random diffusers VAE (scaling factor 0.3)."""
  vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=1,
                                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                                latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.3)
  sd_pipelines.randomize(vae, 0)
  folder = tmp_path_factory.mktemp("vae")
  vae.save_pretrained(folder)
  return vae, folder


def test_inpaint_input_equals_diffusers_inpainting_layout(diffusers_vae):
  """concat = [interpolate(mask, latent size) (nearest), scale * E(image * (mask < 0.5)).mode()], as diffusers'
  StableDiffusionInpaintPipeline.prepare_mask_latents builds the UNet's channels 5..9 (with the posterior mode)."""
  torch_vae, folder = diffusers_vae
  vae, vae_params, _ = pretrained.load_diffusers_vae(folder)
  inpaint = conditioning.InpaintConditioner().with_first_stage(vae, vae_params, 0.3)
  params = nn.unbox(inpaint.frozen_params())
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  mask = (rng.uniform(size=(2, 16, 16)) < 0.4).astype(np.float32)
  inputs = inpaint.request_inputs({"image": image, "mask": mask}, 2)
  ours = np.asarray(inpaint.unet_kwargs(params, inputs)["concat"])                    # [2, 4, 4, 1 + 4]
  with torch.no_grad():
    mask_t = torch.from_numpy(mask[:, None])
    masked = torch.from_numpy(image.transpose(0, 3, 1, 2)) * (mask_t < 0.5)
    small_mask = torch.nn.functional.interpolate(mask_t, size=(4, 4))
    latents = torch_vae.encode(masked).latent_dist.mode() * torch_vae.config.scaling_factor
  np.testing.assert_array_equal(ours[..., :1], small_mask.numpy().transpose(0, 2, 3, 1))
  assert rel_err(ours[..., 1:], latents.numpy().transpose(0, 2, 3, 1)) <= 1e-5
  assert not inpaint.guided                                                           # the null keeps the image
  np.testing.assert_array_equal(inpaint.null_unet_kwargs(params, inputs)["concat"], ours)
  # Training draws masks on device: same images, fresh masks every step.
  batch = {"image": jnp.asarray(image)}
  first, second = (inpaint.train_inputs(batch, jax.random.key(k))["mask"] for k in (0, 1))
  assert first.shape == (2, 16, 16, 1) and not np.array_equal(first, second)


def test_known_region_survives_sampling():
  """Sampling keeps latent cells whose pixels are all known at the image's own latent: a mask with nothing to
  fill gives exactly the autoencoder's reconstruction; a hole changes the image there; paste_known puts the known
  pixels back."""
  config = tiny_config("data.name=shapes", "autoencoder.model.in_channels=3", "ldm.conditioning.kinds=('inpaint',)")
  model = random_bundle(config)
  model = dataclasses.replace(model, params={**model.params, "unet": jax.tree.map(  # a UNet that predicts noise
      lambda p: p + 0.05, model.params["unet"])})
  image = np.stack([data.make_dataset(config.data, "val")[i]["image"] for i in range(2)])
  generator = generation.Generator(model)
  nothing, _ = generator({"image": image, "mask": np.zeros((2, 16, 16))}, num_steps=3, seed=1)
  ae, ae_params = model.autoencoder, model.params["autoencoder"]
  reconstruction = ae.apply({"params": ae_params}, first_stage_latent(ae, ae_params, image), method=type(ae).decode)
  np.testing.assert_allclose(nothing, np.clip(np.asarray(reconstruction) / 2 + 0.5, 0, 1), atol=1e-5)
  hole = np.zeros((2, 16, 16))
  hole[:, 5:11, 4:8] = 1                        # latent cells (1, 1), (2, 1) fully, (1..2, 0) not at all
  filled, _ = generator({"image": image, "mask": hole}, num_steps=3, seed=1)
  assert np.abs(filled - nothing).mean() > 0.05
  cells = model.conditioning.sampler_kwargs(model.params["conditioner"], model.conditioning.request_inputs(
      {"image": image, "mask": hole}, 2))["mask"]
  expected = np.ones((2, 4, 4, 1))
  expected[:, 1:3, 1] = 0                       # rows 5..10 touch cells 1 and 2; columns 4..7 are cell 1
  np.testing.assert_array_equal(cells, expected)
  # paste_known: the known pixels are the input's, the hole is what sampling filled in.
  pasting = copy.copy(model.conditioning["inpaint"])
  pasting.paste_known = True
  pasted, _ = generation.Generator(dataclasses.replace(model, conditioning=conditioning.Conditioning([pasting])))(
      {"image": image, "mask": hole}, num_steps=3, seed=1)
  known = np.broadcast_to(hole[..., None] == 0, pasted.shape)
  np.testing.assert_allclose(pasted[known], np.clip(image / 2 + 0.5, 0, 1)[known], atol=1e-6)
  np.testing.assert_allclose(pasted[~known], filled[~known], atol=1e-6)


def test_inpaint_bad_requests_name_both_shapes():
  config = tiny_config("data.name=shapes", "autoencoder.model.in_channels=3", "ldm.conditioning.kinds=('inpaint',)")
  cond = random_bundle(config).conditioning
  image = np.zeros((1, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match=r"'mask' of shape \(1, 12, 16\) does not fit 'image' of shape \(1, 16, 16, 3\)"):
    cond.request_inputs({"image": image, "mask": np.zeros((1, 12, 16))}, 1)
  with pytest.raises(ValueError, match=r"'image' has shape \(1, 18, 16, 3\); its height and width must be multiples "
                                       r"of the autoencoder's factor 4"):
    cond.request_inputs({"image": np.zeros((1, 18, 16, 3)), "mask": np.zeros((1, 18, 16))}, 1)
  with pytest.raises(ValueError, match=r"needs \['mask'\]"):
    cond.request_inputs({"image": image}, 1)
  with pytest.raises(ValueError, match="ldm.latents_path"):
    stored = tiny_config("data.name=shapes", "autoencoder.model.in_channels=3", "ldm.conditioning.kinds=('inpaint',)",
                         "ldm.latents_path=/nowhere")
    ldm.raw_latents(stored, random_bundle(config))


def test_segmentation_fractions_larger_maps_and_bad_maps():
  seg = conditioning.SegmentationConditioner(5, null="zeros", factor=4)
  maps = np.random.default_rng(0).integers(0, 5, (2, 16, 24))
  fractions = seg.request_inputs({"segmentation": maps}, 2)["segmentation"]
  assert fractions.shape == (2, 4, 6, 5) and seg.request_grid({"segmentation": fractions}) == (4, 6)
  np.testing.assert_allclose(fractions.sum(-1), 1.0, atol=1e-6)
  cell = maps[1, 4:8, 8:12]
  np.testing.assert_allclose(fractions[1, 1, 2], [np.mean(cell == k) for k in range(5)], atol=1e-6)
  assert seg.guided and np.all(seg.null_request_inputs({"segmentation": maps}, 2)["segmentation"] == 0)
  with pytest.raises(ValueError, match=r"segmentation map of shape \(2, 18, 24\); its height and width must be "
                                       r"multiples of the autoencoder's factor 4"):
    seg.request_inputs({"segmentation": np.zeros((2, 18, 24), int)}, 2)
  with pytest.raises(ValueError, match=r"segmentation class id 7 is not a class of this model \(0\.\.4\)"):
    seg.request_inputs({"segmentation": np.full((2, 16, 16), 7)}, 2)


def test_layout_null_is_the_encoder_on_the_empty_layout_and_unknown_ids_are_named():
  config = tiny_config("data.name=shapes", "data.num_classes=12", "autoencoder.model.in_channels=3",
                       "ldm.conditioning.kinds=('layout',)", "ldm.conditioning.layout.width=16",
                       "ldm.conditioning.layout.layers=1", "ldm.conditioning.layout.heads=2")
  cond = conditioning.from_config(config)
  layout = cond["layout"]
  params = nn.unbox(cond.init_params(jax.random.key(0)))
  assert cond.unet_fields() == {"context_dim": 16} and cond.batch_fields() == ("tokens",)
  example = data.make_dataset(config.data, "train")[0]
  tokens = layout.prepare(example)["tokens"]
  np.testing.assert_array_equal(layout.tokenizer.decode(tokens)[1], example["box_labels"][example["box_labels"] >= 0])
  empty = layout.tokenizer.encode(np.zeros((0, 4)), [])
  null = cond.null_unet_kwargs(params, {"tokens": jnp.asarray(tokens[None].repeat(2, 0))})["context"]
  direct = layout.encoder.apply({"params": params["layout"]["encoder"]}, jnp.asarray(empty[None])).hidden_states
  assert null.shape == (2, 17, 16) and rel_err(null[1], direct[0]) <= 1e-6
  request = {"boxes": np.tile(example["boxes"], (2, 1, 1)), "box_labels": np.array([[0, 5, -1], [3, 12, -1]])}
  with pytest.raises(ValueError, match=r"sampling request, layout 1: object 1 has class id 12, not a class of this "
                                       r"model \(0\.\.11"):
    cond.request_inputs(request, 2)
