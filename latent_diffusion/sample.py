"""Writes images from a trained LDM (--workdir) or a pretrained text-to-image model (--pretrained).

  python -m latent_diffusion.sample --workdir=runs/quickstart --num_images=20 --label=3 \
      --num_steps=50 --eta=0.0 --guidance_scale=3.0 --seed=1
  python -m latent_diffusion.sample --pretrained=DIR --prompt="a photo of a cat" --steps=50 --guidance=7.5

--workdir restores the EMA weights of the latest checkpoints; --pretrained reads a local diffusers
folder (Stable Diffusion layout). Every image is written as a PNG under --output (default
WORKDIR/samples/ or ./samples), plus grid.png.
"""

import pathlib
import time

import jax
import numpy as np
from absl import app, flags, logging

from latent_diffusion import configuration, evaluate, parallel, sampling, text_to_image
from latent_diffusion.diffusion import SAMPLERS
from latent_diffusion.training import loop
from latent_diffusion.weights import pretrained

_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory (as given to latent_diffusion.train).")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "A local diffusers text-to-image folder (model_index.json).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Text prompt (repeat the flag for several); with --pretrained.")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "Negative prompt for classifier-free guidance.")
_SIZE = flags.DEFINE_integer("size", None, "Image side in pixels (default: the model's).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory; default WORKDIR/samples.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", None, "How many images (default 16, or one per --prompt).")
_LABEL = flags.DEFINE_integer("label", -1, "Class to condition on; -1 cycles through all classes.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps (default: config.sample.num_steps).")
_SAMPLER = flags.DEFINE_enum("sampler", None, sorted(SAMPLERS), "Sampler (default: the config's / model's).")
_ETA = flags.DEFINE_float("eta", None, "DDIM eta (default: config.sample.eta).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (default: config).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the initial noise and sampler noise.")
flags.DEFINE_alias("steps", "num_steps")
flags.DEFINE_alias("guidance", "guidance_scale")


def apply_flag_overrides(sample_config) -> None:
  """Sets the sampler options given on the command line in config.sample."""
  overrides = {"num_steps": _NUM_STEPS.value, "sampler": _SAMPLER.value, "eta": _ETA.value,
               "guidance_scale": _GUIDANCE.value}
  for key, value in overrides.items():
    if value is not None:
      sample_config[key] = value


def write_images(images: np.ndarray, names: list[str], output: pathlib.Path) -> None:
  output.mkdir(parents=True, exist_ok=True)
  for image, name in zip(images, names):
    sampling.to_pil(image).save(output / name)
  sampling.save_grid(images, rows=1, path=output / "grid.png")
  print(f"Wrote {len(images)} images to {output}")


def sample_trained_run(workdir: pathlib.Path) -> None:
  """Class-conditional samples from the EMA weights of a run trained by latent_diffusion.train."""
  meta = loop.latest_meta(workdir / "ldm")
  if meta is None:
    raise app.UsageError(f"No LDM checkpoint under {workdir / 'ldm'}; train one with latent_diffusion.train first.")
  config = configuration.config_from_json(meta["config"])
  num_classes = config.data.num_classes
  if not -1 <= _LABEL.value < num_classes:
    raise app.UsageError(f"--label={_LABEL.value} is not a class of this model (0..{num_classes - 1}, or -1).")
  apply_flag_overrides(config.sample)
  generate, unet_params, ae_params = evaluate.load_generator(config, workdir, parallel.make_mesh(config.mesh))
  n = _NUM_IMAGES.value or 16
  labels = np.full(n, _LABEL.value) if _LABEL.value >= 0 else np.arange(n) % num_classes
  start = time.perf_counter()
  images = sampling.generate_for_labels(generate, unet_params, ae_params, jax.random.key(_SEED.value),
                                        labels.astype(np.int32), batch_size=n)
  logging.info("Sampled %d images in %.2f s (incl. compile).", n, time.perf_counter() - start)
  write_images(images, [f"{i:04d}_class{label}.png" for i, label in enumerate(labels)],
               pathlib.Path(_OUTPUT.value or workdir / "samples"))


def sample_pretrained(folder: pathlib.Path) -> None:
  """Text-to-image samples from a diffusers folder, timing compile and generation apart."""
  if not _PROMPT.value:
    raise app.UsageError("--pretrained needs at least one --prompt.")
  n = _NUM_IMAGES.value or len(_PROMPT.value)
  prompts = [_PROMPT.value[i % len(_PROMPT.value)] for i in range(n)]
  pipe = text_to_image.TextToImage(pretrained.load_diffusers(folder))
  images, timings = pipe(prompts, [_NEGATIVE.value] * n, num_steps=_NUM_STEPS.value or 50,
                         guidance_scale=7.5 if _GUIDANCE.value is None else _GUIDANCE.value, sampler=_SAMPLER.value,
                         eta=_ETA.value or 0.0, height=_SIZE.value, width=_SIZE.value, seed=_SEED.value)
  print(f"compile {timings.compile_seconds:.2f} s; {timings.seconds_per_image:.3f} s per image "
        f"({n} images in {timings.run_seconds:.2f} s)")
  write_images(images, [f"{i:04d}.png" for i in range(n)], pathlib.Path(_OUTPUT.value or "samples"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (_WORKDIR.value is None) == (_PRETRAINED.value is None):
    raise app.UsageError("Give exactly one of --workdir (a trained run) and --pretrained (a diffusers folder).")
  logging.set_verbosity(logging.INFO)
  if _PRETRAINED.value:
    sample_pretrained(pathlib.Path(_PRETRAINED.value))
  else:
    sample_trained_run(pathlib.Path(_WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
