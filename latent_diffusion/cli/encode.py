"""Pre-encodes an image collection into ArrayRecord latent shards with a trained autoencoder.

  ldm-encode --config=configs/quickstart.py --autoencoder=runs/quickstart \
      --input='shards/{00000..00127}.tar' --output=latents/ --config.data.name=tar_shards \
      --config.data.image_size=256 [--config.encode.output=sample --config.encode.dtype=bfloat16]
      [--config.encode.text=context --config.ldm.conditioning.text.encoder_path=clip-text-encoder/]
  (or python -m latent_diffusion.cli.encode with the same arguments)

Resumable and exactly once: rerun the same command after a crash. Multi-host: run it on every
host with the flags of latent_diffusion.cli.train (--coordinator_address ... or --auto_distributed).
One job per output folder (a second one refuses, naming the holder). On SIGTERM it abandons its
unfinished shards and exits with code 75 (latent_diffusion.preemption.PREEMPTED_EXIT_CODE).
Stage 2 reads the output with --config.ldm.latents_path=latents/.
"""

import json
import pathlib

import jax
from absl import app, flags, logging

from latent_diffusion import (cli, compiler, conditioning, configuration, console, data, encoding, parallel, preemption,
                              workdir_lock)
from latent_diffusion.cli import job_flags
from latent_diffusion.training import autoencoder, loop

_INPUT = flags.DEFINE_string("input", None, "Shard pattern (tar_shards) or class-folder root (image_folder).",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the latent shards and manifest.json.", required=True)
_AUTOENCODER = flags.DEFINE_string("autoencoder", None, "Workdir of a latent_diffusion.cli.train run whose "
                                   "autoencoder (EMA weights of the latest checkpoint) encodes.")

_VAE = flags.DEFINE_string("vae", None, "Or: a local diffusers AutoencoderKL folder (config.json + safetensors), "
                           "e.g. the vae/ of a Stable Diffusion pipeline.")


def load_encoder(mesh):
  """(module, params, description) of the autoencoder named by --autoencoder or --vae."""
  if (_AUTOENCODER.value is None) == (_VAE.value is None):
    raise app.UsageError("Give exactly one of --autoencoder (a training workdir) and --vae (a diffusers folder).")
  if _VAE.value:
    # Imports transformers (seconds at start-up): only when a diffusers VAE is asked for.
    from latent_diffusion.weights import pretrained  # pylint: disable=import-outside-toplevel
    vae, params, _ = pretrained.load_diffusers_vae(_VAE.value)
    return vae, jax.device_put(params, parallel.replicated(mesh)), f"diffusers {_VAE.value}"
  workdir = pathlib.Path(_AUTOENCODER.value)
  meta = loop.latest_meta(workdir / "autoencoder")
  if meta is None:
    raise app.UsageError(f"No autoencoder checkpoint under {workdir / 'autoencoder'}; train one first.")
  ae, params = autoencoder.load_params(configuration.config_from_json(meta["config"]), workdir, mesh)
  return ae, params, f"{workdir / 'autoencoder'} (latest checkpoint)"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure_logging()
  job_flags.initialize_distributed()
  preemption.install()
  config = configuration.parsed_config()
  compiler.configure(config)
  if config.data.name not in data.IMAGE_SOURCES:
    raise app.UsageError(f"--config.data.name={config.data.name!r}: encode reads {sorted(data.IMAGE_SOURCES)}.")
  mesh = parallel.make_mesh(config.mesh)
  output = pathlib.Path(_OUTPUT.value)
  with job_flags.user_errors_as_messages(), workdir_lock.hold(output, "encode job"):
    ae, ae_params, encoder_name = load_encoder(mesh)
    encoding.check_encoder(ae, encoder_name, config.data.image_size)
    source = data.IMAGE_SOURCES[config.data.name](_INPUT.value, config.data)
    text = conditioning.text_conditioner(config, source="caption") if config.encode.text != "none" else None
    ae_workdir = str(pathlib.Path(_AUTOENCODER.value).absolute()) if _AUTOENCODER.value else None
    description = {"input": _INPUT.value, "data_name": config.data.name, "autoencoder_workdir": ae_workdir,
                   "truncated_shards": [str(p) for p in getattr(source, "truncated_shards", [])],
                   "run_config": json.loads(config.to_json_best_effort())}
    manifest = encoding.encode_to_shards(
        source, output, ae, ae_params, image_size=config.data.image_size, encode_config=config.encode, mesh=mesh,
        mesh_config=config.mesh, encoder_name=encoder_name, skipped_at_index=source.skipped, text=text,
        description=description)
  if manifest["truncated_shards"]:
    logging.warning("encode: truncated tar(s) %s: the samples after each cut are lost (a tar cannot say how many); "
                    "rewrite those shards to recover them.", manifest["truncated_shards"])
  summary = {k: manifest[k] for k in ("records", "source_samples", "skipped_counts", "latent_shape",
                                      "last_run_throughput")}
  print(json.dumps(summary, indent=1))


def run():
  """The `ldm-encode` console script."""
  cli.run_main(main, __name__, configuration.flags_parser, own_allocator=True)


if __name__ == "__main__":
  run()
