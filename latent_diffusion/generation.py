"""Images from a latent diffusion model as one compiled function per (batch, size, sampler settings).

condition inputs -> conditioner on device (text encoder, labels, concat) -> sampler scan with
classifier-free guidance (the UNet on the [cond; uncond] batch) -> decoder -> the conditioning's pixels
(Conditioner.pixels: residual super-resolution, pasted inpainting) -> images [B, H, W, C] in [0, 1].

One generator serves trained runs and imported pipelines alike (`bundle.LatentDiffusion`): a request
names what the model's conditioners read ('prompt' and 'negative_prompt' for text, 'label' for classes,
'image' and 'mask' for inpainting, 'low_res', 'segmentation', 'boxes' and 'box_labels' for layouts, the
concat field for other image-shaped conditions). Image-shaped conditions fix the output size (a larger map or
low-resolution image gives a larger image); conditioners may add sampler inputs (inpainting's known region).
The guidance scale is a traced argument, so changing it does not recompile; a model whose null condition
equals its condition (inpainting, super-resolution alone) is sampled without the unconditional branch.
Parameters stay where the bundle placed them.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from latent_diffusion import compiler
from latent_diffusion.bundle import LatentDiffusion
from latent_diffusion.diffusion import SAMPLERS, sampler_options


@dataclasses.dataclass
class Timings:
  compile_seconds: float
  run_seconds: float
  num_images: int

  @property
  def seconds_per_image(self) -> float:
    return self.run_seconds / self.num_images


def _request_size(request: dict) -> int | None:
  """Rows a request asks for: the length of its per-image fields (a lone string counts as one row for all)."""
  sizes = {len(v) for k, v in request.items() if k != "negative_prompt" and not isinstance(v, str)}
  if len(sizes) > 1:
    raise ValueError(f"Request fields have different lengths {sorted(sizes)}: give one value per image.")
  return sizes.pop() if sizes else None


class Generator:
  """Samples images from a LatentDiffusion bundle; compiled functions are cached per shape and settings.

  The parameters go to the devices once, here: sharded over `mesh` by their logical axes (with `mesh_config`),
  or, without a mesh, host arrays are committed to the default device (arrays already on devices, e.g.
  replicated over a multi-process mesh, stay where they are); calls never transfer them again.
  """

  def __init__(self, model: LatentDiffusion, mesh=None, mesh_config=None):
    if mesh is not None:
      model = model.placed(mesh, mesh_config)
    else:
      place = lambda x: x if isinstance(x, jax.Array) else jax.device_put(x)
      model = dataclasses.replace(model, params=jax.tree.map(place, model.params))
    self.model = model
    self._compiled = {}

  def sample_fn(self, num_steps: int, sampler: str | None = None, eta: float | None = None,
                spacing: str | None = None):
    """The uncompiled generate(params, cond_inputs, uncond_inputs, x_T, rng, guidance_scale) -> images of these
    sampler settings (for callers that compile it themselves, e.g. with output shardings)."""
    name = sampler or self.model.sampler
    options = sampler_options(name, self.model.sampler_options, num_steps=num_steps, eta=eta, spacing=spacing)
    return self._generate_fn(name, tuple(sorted(options.items())))

  def _generate_fn(self, sampler: str, options: tuple):
    m = self.model
    sample = SAMPLERS[sampler]

    def generate(params, cond_inputs, uncond_inputs, x_T, rng, guidance_scale):
      cond_params = params.get("conditioner", {})
      conditioned = bool(m.conditioning.kinds)
      cond = m.conditioning.unet_kwargs(cond_params, cond_inputs) if conditioned else None
      guided = conditioned and m.conditioning.guided
      uncond = m.conditioning.unet_kwargs(cond_params, uncond_inputs) if guided else None
      extra = m.conditioning.sampler_kwargs(cond_params, cond_inputs) if conditioned else {}
      model_fn = lambda x_t, t, c: m.unet.apply({"params": params["unet"]}, x_t, t, **(c or {}))
      z0 = sample(model_fn, m.schedule, x_T, rng, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                  **extra, **dict(options))
      images = m.autoencoder.apply({"params": params["autoencoder"]}, z0 / m.scale_factor,
                                   method=type(m.autoencoder).decode)
      if conditioned:
        images = m.conditioning.pixels(images, cond_inputs)
      return jnp.clip(images / 2.0 + 0.5, 0.0, 1.0)

    return generate

  def _compile(self, sampler: str, options: dict, args) -> tuple:
    frozen = tuple(sorted(options.items()))
    key = (sampler, frozen) + tuple((a.shape, a.dtype) for a in jax.tree.leaves(args))
    if key in self._compiled:
      return self._compiled[key], 0.0
    start = time.perf_counter()
    self._compiled[key] = jax.jit(self._generate_fn(sampler, frozen),
                                  compiler_options=compiler.jit_options()).lower(*args).compile()
    return self._compiled[key], time.perf_counter() - start

  def latent_shape(self, height: int | None, width: int | None) -> tuple[int, int, int]:
    """[h, w, c] of x_T for an image of height x width pixels (default: the trained size)."""
    m = self.model
    height = height or m.default_size[0]
    width = width or m.default_size[1]
    levels = m.vae_scale * 2 ** (len(m.unet.channel_mult) - 1)
    if height % levels or width % levels:
      raise ValueError(f"height={height} and width={width} must be multiples of {levels} (the autoencoder's "
                       f"factor {m.vae_scale} x the UNet's {levels // m.vae_scale}).")
    return height // m.vae_scale, width // m.vae_scale, m.latent_shape[2]

  def __call__(self, request: dict | None = None, *, num_images: int | None = None, num_steps: int = 50,
               guidance_scale: float = 7.5, sampler: str | None = None, eta: float | None = None,
               spacing: str | None = None, height: int | None = None, width: int | None = None, seed: int = 0,
               latents: np.ndarray | None = None) -> tuple[np.ndarray, Timings]:
    """Images float32 [B, H, W, C] in [0, 1] and timings (compile time apart from the run).

    request: {'prompt': [B] or one str, 'negative_prompt': [B] or one str, 'label': int [B], 'image' [B, H, W, C]
      and 'mask' [B, H, W] (inpainting), 'low_res' [B, h, w, C], 'segmentation' int [B, H, W], 'boxes' [B, M, 4]
      and 'box_labels' [B, M] (layouts), <concat field>: [B, h, w, k]}, as the model's conditioners need; B from
      its fields or num_images.
    height / width: the image size in pixels; default: what the request's image-shaped conditions fix, else the
      trained size.
    sampler / eta / spacing: override the model's defaults (an option the sampler lacks is an error).
    latents: optional x_T [B, h, w, c] (NHWC); by default normal(fold_in(key(seed), 1)).
    """
    m, request = self.model, dict(request or {})
    num = num_images or _request_size(request)
    if num is None:
      raise ValueError("Say how many images: num_images, or one request value per image.")
    cond = m.conditioning.request_inputs(request, num)
    uncond = m.conditioning.null_request_inputs(request, num) if m.conditioning.guided else {}
    grid = m.conditioning.request_grid(cond)
    if grid is not None and height is None and width is None:
      height, width = grid[0] * m.vae_scale, grid[1] * m.vae_scale
    shape = (num, *self.latent_shape(height, width))
    if grid is not None and tuple(grid) != shape[1:3]:
      shapes = {name: tuple(np.shape(value)) for name, value in cond.items() if np.ndim(value) >= 3}
      raise ValueError(f"The request's image-shaped conditions {shapes} fit the latent grid {tuple(grid)} "
                       f"({grid[0] * m.vae_scale} x {grid[1] * m.vae_scale} pixels); the requested size "
                       f"height={shape[1] * m.vae_scale}, width={shape[2] * m.vae_scale} is the latent grid {shape[1:3]}.")
    rng = jax.random.key(seed)
    if latents is None:
      latents = jax.random.normal(jax.random.fold_in(rng, 1), shape, jnp.float32)
    elif tuple(latents.shape) != shape:
      raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} (NHWC) for this request/size.")
    name = sampler or m.sampler
    options = sampler_options(name, m.sampler_options, num_steps=num_steps, eta=eta, spacing=spacing)
    args = (m.params, cond, uncond, jnp.asarray(latents, jnp.float32), rng, jnp.float32(guidance_scale))
    compiled, compile_seconds = self._compile(name, options, args)
    start = time.perf_counter()
    images = np.asarray(compiled(*args))
    return images, Timings(compile_seconds, time.perf_counter() - start, num)


def generate_in_batches(generator: Generator, request: dict, batch_size: int, seed: int = 0,
                        **settings) -> np.ndarray:
  """Images [N, H, W, C] for a request of N rows, in fixed-size batches (the last padded: one compile).

  Batch k uses seed + k; `settings` are Generator keyword arguments (num_steps, guidance_scale, ...).
  """
  num = _request_size(request)
  if num is None:
    raise ValueError("generate_in_batches needs per-image request fields (e.g. 'label' or 'prompt' lists).")
  outputs = []
  for k, start in enumerate(range(0, num, batch_size)):
    chunk = {}
    for key, value in request.items():
      if isinstance(value, str):
        chunk[key] = value
        continue
      rows = list(value[start:start + batch_size]) if isinstance(value, list) else np.asarray(value)[start:start + batch_size]
      pad = batch_size - len(rows)
      chunk[key] = rows + [rows[-1]] * pad if isinstance(rows, list) else np.concatenate([rows, np.repeat(rows[-1:], pad, 0)])
    images, _ = generator(chunk, seed=seed + k, **settings)
    outputs.append(images[:min(batch_size, num - start)])
  return np.concatenate(outputs)
