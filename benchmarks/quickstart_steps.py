"""Times a config's compiled pieces: stage-1 and stage-2 train steps (with its conditioning), and CFG sampling.

  python benchmarks/quickstart_steps.py [--config=configs/quickstart.py] [--config.key=value ...]
  python benchmarks/quickstart_steps.py --config=configs/text_quickstart.py     # precomputed text encodings
  python benchmarks/quickstart_steps.py --config=configs/text_quickstart.py --config.ldm.conditioning.text.source=caption
                                                                                # the frozen text encoder in the step

Prints and writes benchmarks/results/steps_<config name>.json: compile seconds, then the median of
`--repeats` timed runs (after warm-up) as steps/s and examples/s, and XLA's cost-model FLOPs of the stage-2
step (independent of the machine's load). Peers and larger workloads are
the subject of the benchmark suite (issue 5).
"""

import dataclasses
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from latent_diffusion import configuration, data, generation, parallel  # noqa: E402
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
  bs = config.data.batch_size
  results = []

  stage1, ae_state, _ = autoencoder.init_state(config, mesh, rng)
  ae_step = jax.jit(autoencoder.make_train_step(stage1))
  height, width = data.image_shape(config.data)
  shape = (bs, height, width, config.autoencoder.model.in_channels)
  images = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, shape), jnp.float32)}
  step = lambda s: ae_step(s, images, rng, {"lpips": None})[0]   # the benchmark's stage 1 has no LPIPS
  results.append(summary("autoencoder_train_step", *timed(step, ae_state, repeats=repeats), bs))

  model = ldm.describe(config, None, mesh)
  tx, state, _ = ldm.init_state(config, model, mesh, rng)
  frozen, _ = ldm.frozen_params(model, mesh, config.mesh)
  h, w, c = model.latent_shape
  inputs = model.conditioning.example_inputs(bs, model.latent_shape)
  latents = {"latent_mean": jnp.zeros((bs, h, w, c)), "latent_logvar": jnp.zeros((bs, h, w, c)), **inputs}
  unet_step = jax.jit(ldm.make_train_step(model, tx, 1.0, config.ldm.loop.ema_decay))
  step = lambda s: unet_step(s, latents, rng, frozen)[0]
  results.append(summary(f"ldm_train_step ({model.conditioning.describe()})", *timed(step, state, repeats=repeats),
                         bs))
  cost = unet_step.lower(state, latents, rng, frozen).compile().cost_analysis()
  results[-1]["gflops"] = round((cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9, 2)

  sampling = ldm.describe(config, None, mesh, text_source="caption")      # sampling reads prompts
  sampling_frozen, _ = ldm.frozen_params(sampling, mesh, config.mesh)
  bundle = dataclasses.replace(sampling, scale_factor=1.0, params={
      "unet": state.ema_params["unet"], "autoencoder": ae_state.eval_params, "conditioner": sampling_frozen})
  generator = generation.Generator(bundle)
  n = config.sample.batch_size
  request = {"label": np.arange(n, dtype=np.int32) % config.data.num_classes} if "class" in model.conditioning else \
      {"prompt": ["a three on the left and a seven on the right"] * n}
  sample = lambda: generator(request, num_steps=config.sample.num_steps, guidance_scale=config.sample.guidance_scale)
  compile_start = time.perf_counter()
  sample()
  compile_s = time.perf_counter() - compile_start
  times = [sample()[1].run_seconds for _ in range(3)]
  results.append(summary(f"sample_{config.sample.sampler}{config.sample.num_steps}_cfg", compile_s, times, n))
  out = pathlib.Path(__file__).parent / "results"
  out.mkdir(exist_ok=True)
  name = pathlib.Path(argv[1].split("=", 1)[1] if len(argv) > 1 else "configs/quickstart.py").stem
  (out / f"steps_{name}.json").write_text(json.dumps(results, indent=2))
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  main(sys.argv)
