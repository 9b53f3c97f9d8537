"""One evaluation run on a random-weight tiny LDM and the digits, for the sharding tests.

  python -m tests.evaluation.sharded_worker COORDINATOR NUM_PROCESSES PROCESS_ID OUT.json [MESH ...]

With NUM_PROCESSES=1, runs once per MESH ('1,1,1' runs on the first device only, '4,2,1' on 8 devices);
with 2 processes, once on a (1, 2, 1) ICI x (2, 1, 1) DCN mesh (each process holds half of every batch and
generates / reads only its half). Process 0 writes {mesh: {'figures': ..., 'errors': ...}} to OUT.json.
"""

import json
import sys

import jax

from latent_diffusion import parallel

EVALS = ("fid", "fid_collapsed", "precision_recall", "kid", "inception_score", "memorization", "reconstruction",
         "classifier_accuracy")


def evaluation_config(mesh_overrides: tuple[str, ...]):
  """configs/tiny.py with 30 generated samples (4 batches of 8, the last padded) and small real subsets."""
  from latent_diffusion.configs.base import evaluator
  from tests.conftest import tiny_config

  config = tiny_config(
      *mesh_overrides, "evaluate.samples_per_class=3", "sample.batch_size=8", "sample.num_steps=3",
      "evaluate.digits_cnn.train_steps=30", "evaluate.sources.val.max_examples=40",
      "evaluate.sources.train.max_examples=30", "evaluate.sources.reconstruction_val.max_examples=20",
      "evaluate.max_kept_features=25")  # < 30 samples: the kept subset is exercised too
  with config.unlocked():
    config.evaluate.evals.kid = evaluator("kid", subsets=5, subset_size=20)
    config.evaluate.evals.inception_score = evaluator("inception_score", output="logits", splits=3)
  return config


def random_trained_model(config, mesh):
  """The tiny LDM bundle with seeded random weights (UNet and autoencoder), replicated over the mesh."""
  import dataclasses

  import flax.linen as nn
  import jax.numpy as jnp

  from latent_diffusion.bundle import unet_init_fn
  from latent_diffusion.evaluation import networks
  from latent_diffusion.training import ldm

  model = ldm.describe(config, None, mesh)
  size = config.data.image_size
  ae_params = model.autoencoder.init({"params": jax.random.key(0), "sample": jax.random.key(0)},
                                     jnp.zeros((1, size, size, 1)))["params"]
  unet_params = unet_init_fn(model.unet, model.conditioning, model.latent_shape)(jax.random.key(1))
  host = lambda params: networks.replicate(jax.device_get(nn.unbox(params)), mesh)
  return dataclasses.replace(model, scale_factor=0.7, params={"unet": host(unet_params), "autoencoder": host(ae_params),
                                                               "conditioner": {}})


def evaluate_on(mesh_overrides: tuple[str, ...], devices=None) -> dict:
  import tempfile

  from latent_diffusion.evaluation import generation, runner

  config = evaluation_config(mesh_overrides)
  mesh = parallel.make_mesh(config.mesh, devices)
  model = random_trained_model(config, mesh)
  ctx = runner.EvalContext(config, tempfile.mkdtemp(), mesh, lambda g: generation.sampler(model, config, g),
                           lambda: (model.autoencoder, model.params["autoencoder"]), config.evaluate.samples_per_class,
                           model_fn=lambda: model)
  figures, errors = runner.run(ctx, EVALS)
  return {"figures": {k: v for k, v in figures.items() if not k.startswith("time_s/")}, "errors": errors}


def main(coordinator: str, num_processes: int, process_id: int, out: str, meshes: list[str]):
  results = {}
  if num_processes > 1:
    parallel.initialize_distributed(coordinator, num_processes, process_id)
    results["2 processes"] = evaluate_on(("mesh.shape=(1, 2, 1)", "mesh.dcn_shape=(2, 1, 1)"))
  for mesh in meshes:
    shape = tuple(int(s) for s in mesh.split(","))
    devices = jax.devices()[:shape[0] * shape[1] * shape[2]]
    results[mesh] = evaluate_on((f"mesh.shape={shape}",), devices)
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:])
