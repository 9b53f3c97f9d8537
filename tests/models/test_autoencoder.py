"""AutoencoderKL and VQModel: every downsampling factor, posterior, quantizer loss and gradients, logical names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_diffusion.models import AutoencoderKL, DiagonalGaussian
from latent_diffusion.models.autoencoder import VectorQuantizer, VQModel


def tiny(ch_mult, **kwargs):
  return AutoencoderKL(**{**dict(in_channels=3, ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=4, embed_dim=3,
                                 groups=4), **kwargs})


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16, 32])
def test_shapes_for_every_downsampling_factor(f):
  levels = int(np.log2(f)) + 1
  model = tiny(tuple([1] + [2] * (levels - 1)))
  x = jax.ShapeDtypeStruct((2, 64, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)},
                                                jnp.zeros(x.shape)))
  posterior = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape), method=AutoencoderKL.encode), variables)
  assert posterior.mean.shape == (2, 64 // f, 32 // f, 3)
  recon = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(posterior.mean.shape), method=AutoencoderKL.decode),
                         variables)
  assert recon.shape == (2, 64, 32, 3)


def test_forward_round_trip_and_annotations(assert_fully_annotated, random_params):
  model = tiny((1, 2))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  assert_fully_annotated(jax.eval_shape(model.init, {"params": jax.random.key(1), "sample": jax.random.key(2)}, x))
  variables = random_params(model, x)
  p = nn.unbox(variables)["params"]
  assert p["encoder"]["down_0_downsample"]["conv"]["kernel"].shape == (3, 3, 8, 8)
  assert p["quant_conv"]["kernel"].shape == (1, 1, 8, 6) and p["post_quant_conv"]["kernel"].shape == (1, 1, 3, 4)

  @jax.jit
  def run(rng):
    recon, posterior = model.apply(variables, x, rngs={"sample": rng})
    mode_recon, _ = model.apply(variables, x, sample_posterior=False)
    decoded = model.apply(variables, posterior.mode(), method=AutoencoderKL.decode)
    return recon, posterior, mode_recon, decoded

  recon, posterior, mode_recon, decoded = run(jax.random.key(3))
  assert recon.shape == x.shape and posterior.mean.shape == posterior.logvar.shape == (2, 4, 4, 3)
  np.testing.assert_allclose(mode_recon, decoded, rtol=1e-5, atol=1e-6)
  assert not np.allclose(recon, mode_recon)  # sampling the posterior uses the 'sample' stream ...
  np.testing.assert_array_equal(recon, run(jax.random.key(3))[0])  # ... deterministically
  with pytest.raises(ValueError, match="not divisible by the downsampling factor f=2"):
    jax.eval_shape(lambda: model.apply(variables, jnp.zeros((1, 7, 8, 3)), method=AutoencoderKL.encode))


def test_bfloat16_compute_keeps_float32_params():
  model = tiny((1, 2, 2), dtype=jnp.bfloat16)
  x = jnp.zeros((1, 16, 16, 3))
  variables = jax.eval_shape(model.init, {"params": jax.random.key(0), "sample": jax.random.key(1)}, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype(jnp.float32)}
  recon, posterior = jax.eval_shape(lambda v: model.apply(v, x, sample_posterior=False), variables)
  assert recon.dtype == posterior.mean.dtype == jnp.bfloat16 and posterior.mean.shape == (1, 4, 4, 3)


def test_too_many_levels_fail_clearly():
  with pytest.raises(ValueError, match="at most f=32"):
    jax.eval_shape(tiny((1,) * 7).init, {"params": jax.random.key(0)}, jnp.zeros((1, 64, 64, 3)))


def test_diagonal_gaussian_kl_and_sampling():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  logvar = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  posterior = DiagonalGaussian.from_moments(jnp.asarray(mean), jnp.asarray(logvar))
  expected = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(posterior.kl(), expected, rtol=1e-5)
  np.testing.assert_allclose(DiagonalGaussian.from_moments(jnp.zeros(4).reshape(1, 1, 1, 4),
                                                           jnp.zeros((1, 1, 1, 4))).kl(), [0.0])
  wide = DiagonalGaussian.from_moments(jnp.full((4000, 1, 1, 2), 3.0), jnp.full((4000, 1, 1, 2), np.log(0.25)))
  samples = wide.sample(jax.random.key(0))
  assert abs(float(samples.mean()) - 3.0) < 0.02 and abs(float(samples.std()) - 0.5) < 0.02
  np.testing.assert_array_equal(wide.mode(), wide.mean)
  clipped = DiagonalGaussian.from_moments(jnp.zeros((1, 1, 1, 2)), jnp.array([-100.0, 100.0]).reshape(1, 1, 1, 2))
  np.testing.assert_array_equal(clipped.logvar.ravel(), [-30.0, 20.0])


def test_kl_options_out_channels_and_no_quant_convs():
  model = tiny((1, 2), in_channels=1, out_channels=2, embed_dim=4, use_quant_conv=False, use_post_quant_conv=False,
               mid_attention=False)
  variables = jax.eval_shape(model.init, {"params": jax.random.key(0), "sample": jax.random.key(1)},
                             jnp.zeros((1, 8, 8, 1)))
  params = nn.unbox(variables)["params"]
  assert "quant_conv" not in params and "post_quant_conv" not in params and "mid_attn" not in params["encoder"]
  recon, posterior = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 8, 8, 1)), sample_posterior=False),
                                    variables)
  assert recon.shape == (1, 8, 8, 2) and posterior.mean.shape == (1, 4, 4, 4)
  with pytest.raises(ValueError, match="embed_dim=3 != z_channels=4 needs both quant convs"):
    jax.eval_shape(tiny((1, 2), use_quant_conv=False).init, {"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 3)))


def test_vq_model_round_trip_and_annotations(assert_fully_annotated, random_params):
  model = VQModel(in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=3, groups=4,
                  num_embeddings=16)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  assert_fully_annotated(jax.eval_shape(model.init, {"params": jax.random.key(1)}, x))
  assert nn.get_partition_spec(jax.eval_shape(model.init, {"params": jax.random.key(1)}, x))["params"]["quantize"][
      "embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  variables = random_params(model, x)
  recon, quantized = jax.jit(model.apply)(variables, x)
  assert recon.shape == x.shape and quantized.latents.shape == (2, 4, 4, 3) and quantized.indices.shape == (2, 4, 4)
  assert quantized.indices.dtype == jnp.int32 and quantized.loss.shape == ()
  from_indices = model.apply(variables, quantized.indices, method=VQModel.decode_indices)
  np.testing.assert_allclose(from_indices, recon, rtol=1e-5, atol=1e-5)
  h = model.apply(variables, x, method=VQModel.encode)
  np.testing.assert_allclose(model.apply(variables, h, method=VQModel.decode), recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("legacy", [True, False])
def test_vector_quantizer_codes_loss_and_gradients(legacy):
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(5, 3)).astype(np.float32)
  h = rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
  quantizer = VectorQuantizer(5, 3, beta=0.25, legacy=legacy)
  params = {"params": {"embedding": jnp.asarray(codebook)}}
  out = quantizer.apply(params, jnp.asarray(h))
  indices = np.argmin(((h[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(out.indices, indices)
  codes = codebook[indices]
  np.testing.assert_allclose(out.latents, codes, rtol=1e-6, atol=1e-6)
  mse = np.mean((codes - h) ** 2)
  np.testing.assert_allclose(out.loss, 1.25 * mse, rtol=1e-5)  # both terms have the value mse
  grad_h, grad_codebook = jax.grad(lambda p, h: quantizer.apply(p, h).loss, argnums=(1, 0))(params, jnp.asarray(h))
  encoder_weight, codebook_weight = (1.0, 0.25) if legacy else (0.25, 1.0)
  np.testing.assert_allclose(grad_h, encoder_weight * 2 * (h - codes) / h.size, rtol=1e-5, atol=1e-7)
  expected = np.zeros_like(codebook)
  np.add.at(expected, indices.ravel(), (codes - h).reshape(-1, 3))
  np.testing.assert_allclose(grad_codebook["params"]["embedding"], codebook_weight * 2 * expected / h.size, rtol=1e-5,
                             atol=1e-7)
  straight_through = jax.grad(lambda h: quantizer.apply(params, h).latents.sum())(jnp.asarray(h))
  np.testing.assert_array_equal(straight_through, np.ones_like(h))
