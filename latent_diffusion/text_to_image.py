"""Text-to-image with a pretrained LDM as one compiled function per (batch, size, sampler settings).

prompts + negative prompts -> token ids -> text encoder -> sampler with classifier-free guidance
(one lax.scan, UNet on the [cond; uncond] batch) -> VAE decoder -> images [B, H, W, 3] in [0, 1].
The guidance scale is a traced argument, so changing it does not recompile.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion.data import tokenization
from latent_diffusion.diffusion import SAMPLERS
from latent_diffusion.weights.pretrained import PretrainedLDM


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """What a compiled generator is specialised on (besides batch and image size)."""
  sampler: str
  num_steps: int
  eta: float = 0.0


@dataclasses.dataclass
class Timings:
  compile_seconds: float
  run_seconds: float
  num_images: int

  @property
  def seconds_per_image(self) -> float:
    return self.run_seconds / self.num_images


class TextToImage:
  """Samples images for prompts; compiled generators are cached per shape and settings."""

  def __init__(self, model: PretrainedLDM):
    self.model = model
    self._compiled = {}

  def token_ids(self, texts: list[str]) -> np.ndarray:
    """int32 [B, L], padded / truncated to the tokenizer's model length (77 for CLIP)."""
    return tokenization.tokenize(self.model.tokenizer, list(texts))

  def _options(self, settings: SamplerSettings) -> dict:
    if settings.sampler not in SAMPLERS:
      raise ValueError(f"Unknown sampler {settings.sampler!r}; known: {sorted(SAMPLERS)}.")
    options = dict(self.model.sampler_options) if settings.sampler == self.model.sampler else {
        "prediction_type": self.model.sampler_options.get("prediction_type", "epsilon")}
    options["num_steps"] = settings.num_steps
    if settings.sampler == "ddim":
      options["eta"] = settings.eta
    return options

  def _build(self, settings: SamplerSettings):
    m, sampler, options = self.model, SAMPLERS[settings.sampler], self._options(settings)

    def generate(unet_params, vae_params, text_params, cond_ids, uncond_ids, x_T, rng, guidance_scale):
      encode = lambda ids: m.text_encoder.apply({"params": text_params}, ids).hidden_states
      cond, uncond = {"context": encode(cond_ids)}, {"context": encode(uncond_ids)}      # [B, L, D] each
      model_fn = lambda x_t, t, c: m.unet.apply({"params": unet_params}, x_t, t, **c)
      z0 = sampler(model_fn, m.schedule, x_T, rng, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                   **options)
      images = m.vae.apply({"params": vae_params}, z0 / m.scaling_factor, method=type(m.vae).decode)
      return jnp.clip(images / 2.0 + 0.5, 0.0, 1.0)

    return jax.jit(generate)

  def _compile(self, settings: SamplerSettings, args) -> tuple:
    key = (settings,) + tuple((a.shape, a.dtype) for a in jax.tree.leaves(args))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = self._build(settings).lower(*args).compile()
      return self._compiled[key], time.perf_counter() - start
    return self._compiled[key], 0.0

  def __call__(self, prompts: list[str], negative_prompts: list[str] | None = None, *, num_steps: int = 50,
               guidance_scale: float = 7.5, sampler: str | None = None, eta: float = 0.0, height: int | None = None,
               width: int | None = None, seed: int = 0, latents: np.ndarray | None = None
               ) -> tuple[np.ndarray, Timings]:
    """Images float32 [B, H, W, 3] in [0, 1] and timings (compile separately from the run).

    latents: optional x_T [B, H/f, W/f, C] (NHWC); by default standard normal from `seed`.
    """
    m = self.model
    negative_prompts = [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
    if len(negative_prompts) != len(prompts):
      raise ValueError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts; give one each.")
    height, width = height or m.default_size, width or m.default_size
    if height % m.vae_scale or width % m.vae_scale:
      raise ValueError(f"height={height} and width={width} must be multiples of the VAE factor {m.vae_scale}.")
    shape = (len(prompts), height // m.vae_scale, width // m.vae_scale, m.latent_channels)
    rng = jax.random.key(seed)
    if latents is None:
      latents = jax.random.normal(jax.random.fold_in(rng, 1), shape, jnp.float32)
    elif tuple(latents.shape) != shape:
      raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} (NHWC) for these prompts/size.")
    settings = SamplerSettings(sampler or m.sampler, num_steps, eta)
    args = (m.unet_params, m.vae_params, m.text_params, self.token_ids(prompts), self.token_ids(negative_prompts),
            jnp.asarray(latents, jnp.float32), rng, jnp.float32(guidance_scale))
    compiled, compile_seconds = self._compile(settings, args)
    start = time.perf_counter()
    images = np.asarray(compiled(*args))
    return images, Timings(compile_seconds, time.perf_counter() - start, len(prompts))
