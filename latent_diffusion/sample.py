"""Writes images from a trained LDM (EMA weights of the latest checkpoints in --workdir).

  python -m latent_diffusion.sample --workdir=runs/quickstart --num_images=20 --label=3 \
      --num_steps=50 --eta=0.0 --guidance_scale=3.0 --seed=1

Every image is written as a PNG under --output (default WORKDIR/samples/), plus grid.png.
"""

import pathlib
import time

import jax
import numpy as np
from absl import app, flags, logging

from latent_diffusion import configuration, evaluate, parallel, sampling
from latent_diffusion.training import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory (as given to latent_diffusion.train).",
                               required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output directory; default WORKDIR/samples.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "How many images.")
_LABEL = flags.DEFINE_integer("label", -1, "Class to condition on; -1 cycles through all classes.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps (default: config.sample.num_steps).")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["ddim", "ddpm"], "Sampler (default: config.sample.sampler).")
_ETA = flags.DEFINE_float("eta", None, "DDIM eta (default: config.sample.eta).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (default: config).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the initial noise and sampler noise.")


def apply_flag_overrides(sample_config) -> None:
  """Sets the sampler options given on the command line in config.sample."""
  overrides = {"num_steps": _NUM_STEPS.value, "sampler": _SAMPLER.value, "eta": _ETA.value,
               "guidance_scale": _GUIDANCE.value}
  for key, value in overrides.items():
    if value is not None:
      sample_config[key] = value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  workdir = pathlib.Path(_WORKDIR.value)
  meta = loop.latest_meta(workdir / "ldm")
  if meta is None:
    raise app.UsageError(f"No LDM checkpoint under {workdir / 'ldm'}; train one with latent_diffusion.train first.")
  config = configuration.config_from_json(meta["config"])
  num_classes = config.data.num_classes
  if not -1 <= _LABEL.value < num_classes:
    raise app.UsageError(f"--label={_LABEL.value} is not a class of this model (0..{num_classes - 1}, or -1).")
  apply_flag_overrides(config.sample)
  generate, unet_params, ae_params = evaluate.load_generator(config, workdir, parallel.make_mesh(config.mesh))
  n = _NUM_IMAGES.value
  labels = np.full(n, _LABEL.value) if _LABEL.value >= 0 else np.arange(n) % num_classes
  start = time.perf_counter()
  images = sampling.generate_for_labels(generate, unet_params, ae_params, jax.random.key(_SEED.value),
                                        labels.astype(np.int32), batch_size=n)
  logging.info("Sampled %d images in %.2f s (incl. compile).", n, time.perf_counter() - start)
  output = pathlib.Path(_OUTPUT.value or workdir / "samples")
  output.mkdir(parents=True, exist_ok=True)
  for i, (image, label) in enumerate(zip(images, labels)):
    sampling.to_pil(image).save(output / f"{i:04d}_class{label}.png")
  sampling.save_grid(images, rows=1, path=output / "grid.png")
  print(f"Wrote {n} images to {output}")


if __name__ == "__main__":
  app.run(main)
