"""Times the quickstart's compiled pieces: stage-1 and stage-2 train steps, and CFG sampling.

  python benchmarks/quickstart_steps.py [--config=configs/quickstart.py] [--config.key=value ...]

Prints and writes benchmarks/results/quickstart_steps.json: compile seconds, then the median of
`--repeats` timed runs (after warm-up) as steps/s and examples/s. Peers and larger workloads are
the subject of the benchmark suite (issue 5).
"""

import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from latent_diffusion import configuration, parallel, sampling  # noqa: E402
from latent_diffusion.training import autoencoder, ldm  # noqa: E402


def timed(fn, *args, repeats: int) -> tuple[float, list[float]]:
  """(first call seconds incl. compile, [seconds of each later call])."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, times


def summary(name: str, compile_s: float, times: list[float], examples: int) -> dict:
  median = statistics.median(times)
  return {"name": name, "compile_s": round(compile_s, 3), "median_s": round(median, 5),
          "spread_s": round(max(times) - min(times), 5), "steps_per_s": round(1 / median, 2),
          "examples_per_s": round(examples / median, 1)}


def main(argv):
  config, rest = configuration.parse_config_args(argv[1:] or ["--config=configs/quickstart.py"])
  repeats = 20
  mesh = parallel.make_mesh(config.mesh)
  rng = jax.random.key(0)
  bs, size = config.data.batch_size, config.data.image_size
  results = []

  ae_model, ae_tx, ae_state, _ = autoencoder.init_state(config, mesh, rng)
  ae_step = jax.jit(autoencoder.make_train_step(ae_model, config.autoencoder.loss, ae_tx, 0.99))
  images = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (bs, size, size, 1)), jnp.float32)}
  step = lambda s: ae_step(s, images, rng)[0]
  results.append(summary("autoencoder_train_step", *timed(step, ae_state, repeats=repeats), bs))

  unet, tx, state, _ = ldm.init_state(config, mesh, rng)
  h, w, c = ldm.latent_shape(config)
  latents = {"latent_mean": jnp.zeros((bs, h, w, c)), "latent_logvar": jnp.zeros((bs, h, w, c)),
             "label": jnp.zeros((bs,), jnp.int32)}
  unet_step = jax.jit(ldm.make_train_step(config, unet, ldm.build_schedule(config), tx, 1.0))
  step = lambda s: unet_step(s, latents, rng)[0]
  results.append(summary("ldm_train_step", *timed(step, state, repeats=repeats), bs))

  generate = sampling.make_generate_fn(unet, ae_model, ldm.build_schedule(config), config.sample, (h, w, c), 1.0,
                                       config.ldm.diffusion.prediction_type, ldm.null_label(config))
  labels = jnp.arange(config.sample.batch_size, dtype=jnp.int32) % config.data.num_classes
  results.append(summary(f"sample_{config.sample.sampler}{config.sample.num_steps}_cfg",
                         *timed(generate, state.ema_params, ae_state.ema_params, rng, labels, repeats=3),
                         config.sample.batch_size))
  out = pathlib.Path(__file__).parent / "results"
  out.mkdir(exist_ok=True)
  (out / "quickstart_steps.json").write_text(json.dumps(results, indent=2))
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  main(sys.argv)
