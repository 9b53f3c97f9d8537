"""The stage-1 objective of LDM: reconstruction NLL (L1 + LPIPS), KL or codebook term, PatchGAN with adaptive weight.

The published formulas (CompVis `LPIPSWithDiscriminator` for KL autoencoders, `VQLPIPSWithDiscriminator` for
VQ ones), for a batch x [B, H, W, C] and its reconstruction x^:
  rec   = |x - x^| + perceptual_weight * LPIPS(x, x^)             per pixel (LPIPS broadcast over pixels)
  nll   = sum(rec / exp(logvar) + logvar) / B                      KL  (the scalar logvar of a Laplace NLL)
        = mean(rec)                                                VQ
  g     = -mean(D(x^))
  d_weight = clip(||dnll/dW|| / (||dg/dW|| + 1e-4), 0, max_adaptive_weight) * disc_weight,
             W the decoder's last convolution kernel (balances the two gradients where they meet)
  factor = disc_factor if step >= disc_start else 0                 (the GAN is off before disc_start)
  generator loss     = nll + kl_weight * sum KL / B + d_weight * factor * g          (KL)
                     = nll + codebook_weight * codebook loss + d_weight * factor * g (VQ)
  discriminator loss = factor * hinge|vanilla(D(x), D(sg(x^)))

Gradients are taken with one forward and one backward pass of the autoencoder: the forward is linearised
once (`jax.vjp`), the last-layer gradients of nll and g come from its VJP (XLA keeps only the last layer's
part of those two calls), and the update uses the VJP of the combined cotangent. Before disc_start the generator's
GAN term is not evaluated at all (`lax.cond`) and the discriminator's loss is multiplied by 0: both are exactly
zero.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# Per-pixel reconstruction term by name: fn(x, x^) -> [B, H, W, C].
RECONSTRUCTION_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "l1": lambda x, recon: jnp.abs(x - recon),
    "l2": lambda x, recon: jnp.square(x - recon),
}


def hinge_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def vanilla_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


# Discriminator loss by name: fn(logits on real images, logits on reconstructions) -> scalar.
DISCRIMINATOR_LOSSES = {"hinge": hinge_loss, "vanilla": vanilla_loss}
REGULARIZATIONS = ("kl", "vq")


def check_loss_config(loss_config, regularization: str) -> None:
  """Names the first unknown option of config.autoencoder.loss / regularization."""
  for key, value, known in (("reconstruction", loss_config.reconstruction, RECONSTRUCTION_LOSSES),
                            ("disc_loss", loss_config.disc_loss, DISCRIMINATOR_LOSSES)):
    if value not in known:
      raise ValueError(f"Unknown autoencoder.loss.{key} {value!r}; known: {sorted(known)}.")
  if regularization not in REGULARIZATIONS:
    raise ValueError(f"Unknown autoencoder.regularization {regularization!r}; known: {list(REGULARIZATIONS)}.")


def nll_loss(x: jax.Array, recon: jax.Array, logvar: jax.Array, loss_config, regularization: str,
             perceptual: Callable[[jax.Array, jax.Array], jax.Array] | None) -> tuple[jax.Array, dict]:
  """(scalar nll, metrics) of reconstructions recon [B, H, W, C]; `perceptual(x, recon) -> [B]` is LPIPS."""
  pixel = RECONSTRUCTION_LOSSES[loss_config.reconstruction](x, recon)
  metrics = {f"{loss_config.reconstruction}_per_pixel": jnp.mean(pixel)}
  rec = pixel
  if loss_config.perceptual_weight > 0:
    distance = perceptual(x, recon)                                      # [B]
    metrics["lpips"] = jnp.mean(distance)
    rec = rec + loss_config.perceptual_weight * distance[:, None, None, None]
  if regularization == "kl":
    nll = jnp.sum(rec / jnp.exp(logvar) + logvar) / x.shape[0]
    metrics["logvar"] = logvar
  else:
    nll = jnp.mean(rec)
  return nll, {**metrics, "nll": nll}


def adaptive_weight(nll_grad: jax.Array, g_grad: jax.Array, loss_config) -> jax.Array:
  """The GAN weight from the last-layer gradients of nll and g (a constant for differentiation)."""
  ratio = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, loss_config.max_adaptive_weight) * loss_config.disc_weight)


def gan_active(step: jax.Array, loss_config) -> jax.Array:
  """Whether the GAN terms are on at `step` (optimizer steps taken before this one, as Lightning's global_step)."""
  return step >= loss_config.disc_start


def _at(tree: Any, path: tuple[str, ...]) -> jax.Array:
  for name in path:
    tree = tree[name]
  return tree


def generator_gradients(forward: Callable, params: Any, x: jax.Array, logvar: jax.Array, step: jax.Array,
                        loss_config, regularization: str, perceptual: Callable | None,
                        discriminate: Callable[[jax.Array], jax.Array] | None, last_layer: tuple[str, ...]):
  """((grads of params, grad of logvar), metrics, aux, reconstructions float32) of the generator loss.

  forward(params) -> ((recon [B, H, W, C], scalar regularization loss, already weighted), aux): the
  autoencoder pass. discriminate(images) -> logits (None: no GAN). last_layer: the path of the decoder's
  last kernel in `params`.
  """
  def forward_f32(p):  # float32 outputs whatever the compute dtype: the cotangents below are float32
    outputs, aux = forward(p)
    return jax.tree.map(lambda a: a.astype(jnp.float32), outputs), aux

  (recon, regularization_loss), autoencoder_vjp, aux = jax.vjp(forward_f32, params, has_aux=True)
  nll_fn = lambda r, lv: nll_loss(x, r, lv, loss_config, regularization, perceptual)
  (nll, metrics), (nll_cotangent, logvar_grad) = jax.value_and_grad(nll_fn, (0, 1), has_aux=True)(recon, logvar)
  cotangent, gan_loss = nll_cotangent, 0.0
  if discriminate is not None:
    last_layer_grad = lambda c: _at(autoencoder_vjp((c, jnp.zeros(())))[0], last_layer)

    def gan_terms():
      g, g_cotangent = jax.value_and_grad(lambda r: -jnp.mean(discriminate(r)))(recon)
      d_weight = adaptive_weight(last_layer_grad(nll_cotangent), last_layer_grad(g_cotangent), loss_config)
      disc_factor = jnp.asarray(loss_config.disc_factor, jnp.float32)
      scale = d_weight * disc_factor
      return g_cotangent * scale, g * scale, {"g_loss": g, "d_weight": d_weight, "disc_factor": disc_factor}

    def off():
      zeros = jnp.zeros(())
      return jnp.zeros_like(recon), zeros, {"g_loss": zeros, "d_weight": zeros, "disc_factor": zeros}

    gan_cotangent, gan_loss, gan_metrics = jax.lax.cond(gan_active(step, loss_config), gan_terms, off)
    cotangent = cotangent + gan_cotangent
    metrics.update(gan_metrics)
  (grads,) = autoencoder_vjp((cotangent, jnp.ones(())))
  metrics["loss"] = nll + regularization_loss + gan_loss
  return (grads, logvar_grad), metrics, aux, recon


def discriminator_gradients(disc_apply: Callable[[Any, jax.Array], jax.Array], disc_params: Any, x: jax.Array,
                            recon: jax.Array, step: jax.Array, loss_config) -> tuple[Any, dict]:
  """(grads of disc_params, metrics) of factor * disc_loss(D(x), D(sg(recon))); exactly zero before disc_start.

  Computed at every step and multiplied by the factor (0 before disc_start), as CompVis does: the discriminator
  is cheap next to the autoencoder, and under a lax.cond XLA:CPU ran this step 1.8x slower.
  """
  recon = jax.lax.stop_gradient(recon)
  disc_loss = DISCRIMINATOR_LOSSES[loss_config.disc_loss]
  active = gan_active(step, loss_config)
  factor = jnp.where(active, loss_config.disc_factor, 0.0)

  def loss_fn(p):
    logits_real, logits_fake = disc_apply(p, x), disc_apply(p, recon)
    loss = factor * disc_loss(logits_real, logits_fake)
    # The mean logits as they are once the GAN is on (0 before, as every GAN figure).
    return loss, {"disc_loss": loss, "logits_real": jnp.where(active, jnp.mean(logits_real), 0.0),
                  "logits_fake": jnp.where(active, jnp.mean(logits_fake), 0.0)}

  return jax.grad(loss_fn, has_aux=True)(disc_params)
