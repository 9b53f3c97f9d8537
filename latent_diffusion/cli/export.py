"""Exports a trained text-to-image run as a diffusers StableDiffusionPipeline folder (EMA weights), a text +
inpaint run as a StableDiffusionInpaintPipeline folder (9-channel UNet).

  ldm-export --workdir=runs/text_quickstart --output=exported/
  # then, with diffusers: StableDiffusionPipeline.from_pretrained("exported/")
  (or python -m latent_diffusion.cli.export with the same arguments)

The UNet, autoencoder, text encoder (trained or frozen; with layer='penultimate' the unused last layer
is left out, which gives diffusers the same outputs), tokenizer (padding to the run's max_length) and
the noise schedule as a scheduler config. A run fine-tuned from a pipeline keeps every config key the
import read.
"""

import pathlib

from absl import app, flags, logging

from latent_diffusion import cli
from latent_diffusion.training import ldm
from latent_diffusion.weights import pretrained

_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory of a text-conditional (or text + inpaint) run.",
                               required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write the diffusers pipeline to.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    model = ldm.load_trained(pathlib.Path(_WORKDIR.value))
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from None
  pretrained.save_diffusers(model, _OUTPUT.value)
  print(f"Wrote a diffusers Stable Diffusion pipeline ({model.conditioning.describe()} conditioning) to {_OUTPUT.value}")


def run():
  """The `ldm-export` console script."""
  cli.run_main(main, __name__)


if __name__ == "__main__":
  run()
