"""The stage-1 objective against a plain PyTorch transcription of the paper's loss (CompVis LPIPSWithDiscriminator
and VQLPIPSWithDiscriminator, written here from their published formulas) on the same weights and inputs.

The autoencoder is reduced to what the loss sees: a fixed decoder feature map h, the decoder's last 3x3
convolution (the adaptive weight's "last layer") and a diagonal Gaussian posterior (KL) or a codebook loss
(VQ) whose inputs are parameters too; LPIPS has a random VGG16 trunk and the lpips package's real heads,
the discriminator is pix2pix's NLayerDiscriminator with 3 layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latent_diffusion.configs import base
from latent_diffusion.models.discriminator import NLayerDiscriminator
from latent_diffusion.models.lpips import LPIPS, load_lpips_params
from latent_diffusion.training import autoencoder_loss

B, S, FEATURES, C = 2, 32, 8, 3
LAST_LAYER = ("decoder", "conv_out", "kernel")


class TorchNLayerDiscriminator(torch.nn.Module):
  """pix2pix's PatchGAN (BatchNorm, LeakyReLU 0.2, 4x4 convolutions padded by 1)."""

  def __init__(self, ch: int, num_layers: int, in_channels: int = 3):
    super().__init__()
    layers = [torch.nn.Conv2d(in_channels, ch, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, num_layers + 1):
      previous, mult = mult, min(2 ** n, 8)
      layers += [torch.nn.Conv2d(ch * previous, ch * mult, 4, 2 if n < num_layers else 1, 1, bias=False),
                 torch.nn.BatchNorm2d(ch * mult), torch.nn.LeakyReLU(0.2)]
    layers.append(torch.nn.Conv2d(ch * mult, 1, 4, 1, 1))
    self.main = torch.nn.Sequential(*layers)

  def forward(self, x):
    return self.main(x)


def torch_discriminator_from(params, ch: int, num_layers: int) -> TorchNLayerDiscriminator:
  """The reference discriminator holding our parameters (in training mode: batch statistics)."""
  module = TorchNLayerDiscriminator(ch, num_layers)
  convs = [m for m in module.main if isinstance(m, torch.nn.Conv2d)]
  norms = [m for m in module.main if isinstance(m, torch.nn.BatchNorm2d)]
  names = [f"conv_{n}" for n in range(num_layers + 1)] + ["conv_out"]
  with torch.no_grad():
    for conv, name in zip(convs, names):
      conv.weight.copy_(torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)))
      if conv.bias is not None:
        conv.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"])))
    for n, norm in enumerate(norms, start=1):
      norm.weight.copy_(torch.from_numpy(np.asarray(params[f"norm_{n}"]["scale"])))
      norm.bias.copy_(torch.from_numpy(np.asarray(params[f"norm_{n}"]["bias"])))
  return module.train()


def reference_losses(x, recon, regularization, last_layer, discriminator, lpips, cfg, kind: str, global_step: int):
  """The paper's generator (optimizer_idx 0) and discriminator (optimizer_idx 1) losses and their terms.

  regularization: posterior (mean, logvar) tensors (KL) or the codebook loss (VQ).
  """
  logvar = torch.tensor(cfg.logvar_init)
  rec_loss = torch.abs(x - recon)
  p_loss = lpips(x, recon) if cfg.perceptual_weight > 0 else torch.zeros(())      # [B, 1, 1, 1]
  rec_loss = rec_loss + cfg.perceptual_weight * p_loss
  if kind == "kl":
    nll_loss = rec_loss / torch.exp(logvar) + logvar
    nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
    mean, posterior_logvar = regularization
    kl = 0.5 * torch.sum(mean ** 2 + torch.exp(posterior_logvar) - 1.0 - posterior_logvar, dim=[1, 2, 3])
    regularization_loss = cfg.kl_weight * torch.sum(kl) / kl.shape[0]
  else:
    nll_loss = torch.mean(rec_loss)
    regularization_loss = cfg.codebook_weight * regularization
  logits_fake = discriminator(recon)
  g_loss = -torch.mean(logits_fake)
  nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
  g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
  d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
  d_weight = torch.clamp(d_weight, 0.0, cfg.max_adaptive_weight).detach() * cfg.disc_weight
  disc_factor = cfg.disc_factor if global_step >= cfg.disc_start else 0.0
  loss = nll_loss + regularization_loss + d_weight * disc_factor * g_loss

  logits_real = discriminator(x.detach())
  logits_fake_detached = discriminator(recon.detach())
  if cfg.disc_loss == "hinge":
    d_loss = 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake_detached)))
  else:
    d_loss = 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake_detached)))
  d_loss = disc_factor * d_loss
  return {"loss": loss, "nll": nll_loss, "l1_per_pixel": torch.mean(torch.abs(x - recon)), "lpips": p_loss.mean(),
          "g_loss": g_loss, "d_weight": d_weight, "disc_loss": d_loss, "logits_real": logits_real.mean(),
          "logits_fake": logits_fake_detached.mean()}


@pytest.fixture(scope="module")
def setup(random_lpips):
  """Shared inputs and weights: LPIPS (ours and the package), discriminator params, decoder tail, posterior."""
  lpips_torch, vgg_path, heads_path = random_lpips
  lpips_params = load_lpips_params(vgg_path, heads_path)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (B, S, S, C)).astype(np.float32)
  h = rng.normal(size=(B, S, S, FEATURES)).astype(np.float32)
  params = {"decoder": {"conv_out": {"kernel": rng.normal(0, 0.2, (3, 3, FEATURES, C)).astype(np.float32),
                                     "bias": rng.normal(0, 0.1, C).astype(np.float32)}},
            "posterior": {"mean": rng.normal(size=(B, 4, 4, 3)).astype(np.float32),
                          "logvar": rng.normal(0, 0.5, (B, 4, 4, 3)).astype(np.float32)}}
  disc = NLayerDiscriminator(ch=8, num_layers=3)
  disc_params = jax.tree.map(np.asarray, nn.unbox(disc.init(jax.random.key(1), x)["params"]))
  return dict(lpips_torch=lpips_torch, lpips_params=lpips_params, x=x, h=h, params=params, disc=disc,
              disc_params=disc_params)


def loss_config(**overrides):
  cfg = base.get_config().autoencoder.loss
  cfg.update(dict(kl_weight=0.01, codebook_weight=0.7, logvar_init=0.3, disc_weight=0.5,
                  disc_start=3, disc_factor=0.8, max_adaptive_weight=1e4), **overrides)
  return cfg


def compile_ours(setup, cfg, kind: str):
  """jit(step) -> (metrics, grads of the decoder tail and posterior, logvar grad, disc grads) from autoencoder_loss."""
  x, h = jnp.asarray(setup["x"]), jnp.asarray(setup["h"])
  codebook_loss = jnp.asarray(0.37)

  def forward(params):
    conv = params["decoder"]["conv_out"]
    recon = jax.lax.conv_general_dilated(h, conv["kernel"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
    if kind == "kl":
      mean, logvar = params["posterior"]["mean"], params["posterior"]["logvar"]
      kl = 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
      return (recon, cfg.kl_weight * jnp.mean(kl)), {}
    return (recon, cfg.codebook_weight * codebook_loss), {}

  perceptual = lambda a, b: LPIPS().apply({"params": setup["lpips_params"]}, a, b)
  discriminate = lambda p: lambda images: setup["disc"].apply({"params": p}, images)

  @jax.jit
  def run(params, disc_params, step):
    (grads, logvar_grad), metrics, _, recon = autoencoder_loss.generator_gradients(
        forward, params, x, jnp.asarray(cfg.logvar_init), step, cfg, kind, perceptual, discriminate(disc_params),
        LAST_LAYER)
    disc_grads, disc_metrics = autoencoder_loss.discriminator_gradients(
        lambda p, images: discriminate(p)(images), disc_params, x, recon, step, cfg)
    return {**metrics, **disc_metrics}, grads, logvar_grad, disc_grads

  return lambda step: run(setup["params"], setup["disc_params"], jnp.asarray(step, jnp.int32))


def reference(setup, cfg, kind: str, step: int):
  """The same quantities from the PyTorch reference."""
  to_nchw = lambda a: torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2).contiguous()
  x, h = to_nchw(setup["x"]), to_nchw(setup["h"])
  conv = setup["params"]["decoder"]["conv_out"]
  weight = torch.nn.Parameter(torch.from_numpy(conv["kernel"].transpose(3, 2, 0, 1).copy()))
  bias = torch.nn.Parameter(torch.from_numpy(conv["bias"].copy()))
  mean = torch.nn.Parameter(to_nchw(setup["params"]["posterior"]["mean"]))
  logvar = torch.nn.Parameter(to_nchw(setup["params"]["posterior"]["logvar"]))
  recon = F.conv2d(h, weight, bias, padding=1)
  regularization = (mean, logvar) if kind == "kl" else torch.tensor(0.37)
  discriminator = torch_discriminator_from(setup["disc_params"], ch=8, num_layers=3)
  terms = reference_losses(x, recon, regularization, weight, discriminator, setup["lpips_torch"], cfg, kind, step)
  terms["loss"].backward()
  disc_params = list(discriminator.parameters())
  disc_grads = torch.autograd.grad(terms["disc_loss"], disc_params) if terms["disc_loss"].requires_grad else None
  grads = {"weight": weight.grad.numpy().transpose(2, 3, 1, 0), "bias": bias.grad.numpy()}
  if kind == "kl":
    grads.update(mean=mean.grad.permute(0, 2, 3, 1).numpy(), logvar=logvar.grad.permute(0, 2, 3, 1).numpy())
  return {k: v.detach().numpy() for k, v in terms.items()}, grads, disc_grads


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# The VQ case leaves LPIPS out (its reduction is the same code; the VGG backward is this test's costliest compile).
@pytest.mark.parametrize("kind,disc_loss,perceptual_weight", [("kl", "hinge", 1.0), ("vq", "vanilla", 0.0)])
def test_every_term_and_gradient_equals_the_paper_loss(setup, kind, disc_loss, perceptual_weight):
  cfg = loss_config(disc_loss=disc_loss, perceptual_weight=perceptual_weight)
  run = compile_ours(setup, cfg, kind)
  for step in (cfg.disc_start - 1, cfg.disc_start):
    metrics, grads, _, disc_grads = run(step)
    terms, ref_grads, ref_disc_grads = reference(setup, cfg, kind, step)
    on = step >= cfg.disc_start
    checked = ["loss", "nll", "l1_per_pixel"] + (["lpips"] if perceptual_weight else []) + (
        ["g_loss", "d_weight", "disc_loss", "logits_real", "logits_fake"] if on else [])
    for name in checked:
      assert relative_error(metrics[name], terms[name]) <= 1e-5, (name, metrics[name], terms[name])
    ours_grads = {"weight": grads["decoder"]["conv_out"]["kernel"], "bias": grads["decoder"]["conv_out"]["bias"]}
    if kind == "kl":
      ours_grads.update(mean=grads["posterior"]["mean"], logvar=grads["posterior"]["logvar"])
    for name, ref in ref_grads.items():
      assert relative_error(ours_grads[name], ref) <= 1e-5, name
    if on:
      assert float(metrics["d_weight"]) > 0 and float(metrics["g_loss"]) != 0
      torch_disc = torch_discriminator_from(setup["disc_params"], 8, 3)
      ref_by_name = dict(zip([n for n, _ in torch_disc.named_parameters()], ref_disc_grads))
      pairs = [(disc_grads["conv_0"]["kernel"], ref_by_name["main.0.weight"].numpy().transpose(2, 3, 1, 0)),
               (disc_grads["norm_1"]["scale"], ref_by_name["main.3.weight"].numpy()),
               (disc_grads["conv_out"]["bias"], ref_by_name["main.11.bias"].numpy())]
      for got, want in pairs:
        assert relative_error(got, want) <= 1e-5
    else:  # before disc_start: exactly no GAN in either loss
      assert float(metrics["g_loss"]) == float(metrics["d_weight"]) == float(metrics["disc_loss"]) == 0.0
      assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(disc_grads))
