"""Writes images from a trained run (--workdir) or an imported pipeline (--pretrained), one generator for both.

  ldm-sample --workdir=runs/quickstart --num_images=20 --label=3 --steps=50 --guidance=3.0
  ldm-sample --workdir=runs/text_quickstart --prompt="a three on the left and a seven on the right"
  ldm-sample --pretrained=DIR --prompt="a photo of a cat" --steps=50 --guidance=7.5
  ldm-sample --workdir=runs/inpainting --image=photo.png --mask=hole.png
  ldm-sample --workdir=runs/super_resolution --low_res=small.png
  ldm-sample --workdir=runs/semantic --segmentation=map.npy --size=64
  (or python -m latent_diffusion.cli.sample with the same arguments)

--workdir restores the EMA weights of the run's latest checkpoints (nothing of the optimizer state);
--pretrained reads a local diffusers folder (Stable Diffusion or Stable Diffusion inpainting layout). What the
model is conditioned on decides which of --prompt / --label / --image + --mask / --low_res / --segmentation it
needs; a condition map is used for every image (each its own noise) and fixes the output size (--size, if given,
must agree with it). Every image is written as a PNG under --output (default
WORKDIR/samples/ or ./samples), plus grid.png; compile time and seconds per image are printed apart.
"""

import pathlib

import numpy as np
from absl import app, flags, logging
from PIL import Image

from latent_diffusion import cli, console, generation, image_grid
from latent_diffusion.bundle import LatentDiffusion
from latent_diffusion.diffusion import SAMPLERS
from latent_diffusion.training import ldm
from latent_diffusion.weights import pretrained

_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory (as given to latent_diffusion.cli.train).")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "A local diffusers text-to-image folder (model_index.json).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Text prompt (repeat the flag for several); text-conditional models.")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "Negative prompt for classifier-free guidance.")
_LABEL = flags.DEFINE_integer("label", -1, "Class to condition on (class-conditional models); -1 cycles through all.")
_SIZE = flags.DEFINE_integer("size", None, "Image side in pixels (default: the model's; larger sizes work too).")
_IMAGE = flags.DEFINE_string("image", None, "Inpainting models: the image to fill (PNG / JPEG, RGB).")
_MASK = flags.DEFINE_string("mask", None, "Inpainting models: the mask, at the image's size (PNG; pixels > 127 are "
                            "filled).")
_LOW_RES = flags.DEFINE_string("low_res", None, "Super-resolution models: the low-resolution image (PNG / JPEG, RGB); "
                               "the output is the autoencoder's factor f times larger.")
_SEGMENTATION = flags.DEFINE_string("segmentation", None, "Semantic models: the map of class ids at the output size "
                                    "(.npy integers [H, W], or a one-channel PNG whose values are the ids).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory; default WORKDIR/samples or ./samples.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", None, "How many images (default 16, or one per --prompt).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps (default: the run's config.sample.num_steps, or 50).")
_SAMPLER = flags.DEFINE_enum("sampler", None, sorted(SAMPLERS), "Sampler (default: the run's / pipeline's).")
_ETA = flags.DEFINE_float("eta", None, "DDIM noise (0 = deterministic); only for --sampler=ddim.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (default: config, or 7.5).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the initial noise and sampler noise.")
flags.DEFINE_alias("steps", "num_steps")
flags.DEFINE_alias("guidance", "guidance_scale")


# Conditioning kind -> the flags of its condition maps, by request field.
_MAP_FLAGS = {"inpaint": {"image": _IMAGE, "mask": _MASK}, "low_res": {"low_res": _LOW_RES},
              "segmentation": {"segmentation": _SEGMENTATION}}


def read_rgb(path: str) -> np.ndarray:
  """float32 [H, W, 3] in [-1, 1] of an image file."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1.0


def read_mask(path: str) -> np.ndarray:
  """float32 [H, W], 1 where the (grey-level) mask image is above 127: the pixels to fill."""
  with Image.open(path) as image:
    return (np.asarray(image.convert("L")) > 127).astype(np.float32)


def read_class_map(path: str) -> np.ndarray:
  """int32 [H, W] class ids of a .npy file or a one-channel PNG; UsageError for anything else."""
  if path.endswith(".npy"):
    ids = np.load(path)
  else:
    with Image.open(path) as image:
      if image.mode not in ("L", "P", "I", "I;16"):
        raise app.UsageError(f"--segmentation={path} is a {image.mode} image; give a one-channel PNG of class ids "
                             f"(mode L, P or I) or a .npy file.")
      ids = np.asarray(image)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise app.UsageError(f"--segmentation={path} holds {ids.dtype} of shape {ids.shape}; expected integer class ids "
                         f"[H, W].")
  return ids.astype(np.int32)


_READERS = {"image": read_rgb, "mask": read_mask, "low_res": read_rgb, "segmentation": read_class_map}


def condition_maps(kinds: set[str], num: int) -> dict:
  """{request field: the map of its flag repeated num times} for the model's conditioning kinds; UsageError for
  a map flag the model does not read or one it needs that is missing."""
  unread = [f"--{flag.name}" for kind, fields in _MAP_FLAGS.items() if kind not in kinds
            for flag in fields.values() if flag.value is not None]
  if unread:
    raise app.UsageError(f"{', '.join(unread)} given, but this model is conditioned on {' + '.join(sorted(kinds))}.")
  maps = {}
  for kind, fields in _MAP_FLAGS.items():
    if kind not in kinds:
      continue
    if any(flag.value is None for flag in fields.values()):
      raise app.UsageError(f"This model is conditioned on '{kind}': give "
                           f"{' and '.join('--' + flag.name for flag in fields.values())}.")
    maps.update({field: np.repeat(_READERS[field](flag.value)[None], num, axis=0) for field, flag in fields.items()})
  return maps


def request_for(model: LatentDiffusion) -> tuple[dict, int, list[str]]:
  """(request, number of images, file names) from the flags, for what `model` is conditioned on."""
  kinds = set(model.conditioning.kinds)
  if _PROMPT.value and "text" not in kinds:
    raise app.UsageError(f"--prompt given, but this model is conditioned on {model.conditioning.describe()}.")
  if _LABEL.value != -1 and "class" not in kinds:
    raise app.UsageError(f"--label given, but this model is conditioned on {model.conditioning.describe()}.")
  if "concat" in kinds:
    raise app.UsageError("This model takes an image-shaped condition; sample it from Python (generation.Generator).")
  request, n = {}, _NUM_IMAGES.value
  if "text" in kinds:
    if not _PROMPT.value:
      raise app.UsageError("This model is text-conditional: give at least one --prompt.")
    n = n or len(_PROMPT.value)
    request.update(prompt=[_PROMPT.value[i % len(_PROMPT.value)] for i in range(n)], negative_prompt=_NEGATIVE.value)
  n = n or 16
  names = [f"{i:04d}.png" for i in range(n)]
  if "class" in kinds:
    classes = model.conditioning["class"].num_classes
    if not -1 <= _LABEL.value < classes:
      raise app.UsageError(f"--label={_LABEL.value} is not a class of this model (0..{classes - 1}, or -1).")
    labels = np.full(n, _LABEL.value) if _LABEL.value >= 0 else np.arange(n) % classes
    request["label"] = labels.astype(np.int32)
    names = [f"{i:04d}_class{label}.png" for i, label in enumerate(labels)]
  request.update(condition_maps(kinds, n))
  return request, n, names


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (_WORKDIR.value is None) == (_PRETRAINED.value is None):
    raise app.UsageError("Give exactly one of --workdir (a trained run) and --pretrained (a diffusers folder).")
  console.configure_logging()
  if _PRETRAINED.value:
    model, defaults = pretrained.load_diffusers(_PRETRAINED.value), {"num_steps": 50, "guidance_scale": 7.5}
    output = pathlib.Path(_OUTPUT.value or "samples")
  else:
    workdir = pathlib.Path(_WORKDIR.value)
    try:
      config, _ = ldm.run_config(workdir)
    except FileNotFoundError as error:
      raise app.UsageError(str(error)) from None
    model = ldm.load_trained(workdir, config=config)
    defaults = {"num_steps": config.sample.num_steps, "guidance_scale": config.sample.guidance_scale}
    output = pathlib.Path(_OUTPUT.value or workdir / "samples")
  request, n, names = request_for(model)
  settings = {"num_steps": _NUM_STEPS.value or defaults["num_steps"],
              "guidance_scale": defaults["guidance_scale"] if _GUIDANCE.value is None else _GUIDANCE.value}
  try:
    images, timings = generation.Generator(model)(
        request, num_images=n, sampler=_SAMPLER.value, eta=_ETA.value, height=_SIZE.value, width=_SIZE.value,
        seed=_SEED.value, **settings)
  except ValueError as error:       # a condition map that does not fit the model or --size: the message names both
    raise app.UsageError(str(error)) from None
  print(f"compile {timings.compile_seconds:.2f} s; {timings.seconds_per_image:.3f} s per image "
        f"({n} images in {timings.run_seconds:.2f} s)")
  output.mkdir(parents=True, exist_ok=True)
  for image, name in zip(images, names):
    image_grid.to_pil(image).save(output / name)
  image_grid.save_grid(images, rows=1, path=output / "grid.png")
  print(f"Wrote {len(images)} images to {output}")


def run():
  """The `ldm-sample` console script."""
  cli.run_main(main, __name__)


if __name__ == "__main__":
  run()
