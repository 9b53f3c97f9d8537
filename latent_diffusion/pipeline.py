"""The experiment: stages run in `config.stages` order; each resumes or skips if already done.

  autoencoder  stage-1 training               -> workdir/autoencoder/
  ldm          stage-2 training on latents     -> workdir/ldm/
  evaluate     sample grid + classifier scores -> workdir/samples.png
Every stage's figures and wall time go to workdir/metrics.json. One job per workdir (a second one
refuses at start, naming the holder); SIGTERM stops the running stage at a saved step (exit code 75).
"""

import json
import logging
import pathlib
import time

import jax

from latent_diffusion import evaluate, parallel, preemption, workdir_lock
from latent_diffusion.training import autoencoder, ldm

# Stage name -> fn(config, workdir, mesh) -> dict of JSON-able figures.
STAGES = {
    "autoencoder": autoencoder.train,
    "ldm": ldm.train,
    "evaluate": evaluate.evaluate,
}


def run(config, workdir: str | pathlib.Path) -> dict:
  """Runs every stage of config.stages; returns (and writes) the metrics of this invocation."""
  workdir = pathlib.Path(workdir)
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f"Unknown stage(s) {unknown} in config.stages; known: {list(STAGES)}.")
  workdir.mkdir(parents=True, exist_ok=True)
  preemption.install()
  with workdir_lock.hold(workdir, "training job"):
    return _run_stages(config, workdir)


def _run_stages(config, workdir: pathlib.Path) -> dict:
  mesh = parallel.make_mesh(config.mesh)
  metrics_path = workdir / "metrics.json"
  metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
  start = time.perf_counter()
  for name in config.stages:
    logging.info("Stage %s starts.", name)
    stage_start = time.perf_counter()
    figures = STAGES[name](config, workdir, mesh)
    figures["wall_time_s"] = round(time.perf_counter() - stage_start, 2)
    metrics[name] = figures
    logging.info("Stage %s done: %s", name, figures)
    if jax.process_index() == 0:
      metrics_path.write_text(json.dumps(metrics, indent=2))
  metrics["total_wall_time_s"] = round(time.perf_counter() - start, 2)
  if jax.process_index() == 0:
    metrics_path.write_text(json.dumps(metrics, indent=2))
  return metrics
