"""The experiment: stages run in `config.stages` order; each resumes or skips if already done.

  autoencoder  stage-1 training               -> workdir/autoencoder/
  ldm          stage-2 training on latents     -> workdir/ldm/
  evaluate     sample grid + classifier scores -> workdir/samples.png
Every stage's figures and wall time go to workdir/metrics.json; a rerun skips a stage that reached its train steps
and keeps its figures. One job per workdir (a second one
refuses at start, naming the holder); SIGTERM stops the running stage at a saved step (exit code 75).
"""

import json
import logging
import pathlib
import time

import jax

from latent_diffusion import compiler, console, parallel, preemption, workdir_lock
from latent_diffusion.evaluation import stage as evaluation_stage
from latent_diffusion.training import autoencoder, ldm, loop

# Training stage name -> its loop options (a stage whose checkpoint reached train_steps is skipped on a rerun).
TRAINING_LOOPS = {"autoencoder": lambda config: config.autoencoder.loop, "ldm": lambda config: config.ldm.loop}

# Stage name -> fn(config, workdir, mesh) -> dict of JSON-able figures.
STAGES = {
    "autoencoder": autoencoder.train,
    "ldm": ldm.train,
    "evaluate": evaluation_stage.evaluate,
}


def run(config, workdir: str | pathlib.Path) -> dict:
  """Runs every stage of config.stages; returns (and writes) the metrics of this invocation."""
  workdir = pathlib.Path(workdir)
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f"Unknown stage(s) {unknown} in config.stages; known: {list(STAGES)}.")
  compiler.configure(config)
  workdir.mkdir(parents=True, exist_ok=True)
  preemption.install()
  with workdir_lock.hold(workdir, "training job"):
    return _run_stages(config, workdir)


def finished(config, workdir: pathlib.Path, name: str, metrics: dict) -> str | None:
  """Why stage `name` need not run again (None: it must run): a training stage at or past its train steps; the
  evaluation of the stage-2 checkpoint it already evaluated, in a run of more stages than evaluate alone."""
  if name in TRAINING_LOOPS:
    steps = loop.trained_steps(workdir / name)
    done = steps is not None and steps >= TRAINING_LOOPS[name](config).train_steps
    return f"already trained ({steps} steps)" if done else None
  if name == "evaluate" and len(config.stages) > 1 and "evaluate" in metrics:
    step = metrics["evaluate"].get("ldm_step")
    return f"already evaluated stage 2 at step {step}" if step == loop.trained_steps(workdir / "ldm") else None
  return None


def _run_stages(config, workdir: pathlib.Path) -> dict:
  mesh = parallel.make_mesh(config.mesh)
  metrics_path = workdir / "metrics.json"
  metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
  for name in config.stages:
    done = finished(config, workdir, name, metrics)
    if done is not None and name in metrics:   # a rerun: keep the figures of the run that did it
      console.say(f"{name}: {done}; skipped, its figures in metrics.json kept.")
      continue
    console.say(f"{name}: starting")
    stage_start = time.perf_counter()
    figures = STAGES[name](config, workdir, mesh)
    if name == "evaluate":
      figures["ldm_step"] = loop.trained_steps(workdir / "ldm")
    figures["wall_time_s"] = round(time.perf_counter() - stage_start, 2)
    metrics[name] = figures
    logging.info("Stage %s done: %s", name, figures)
    console.say(f"{name}: done in {console.duration(figures['wall_time_s'])}")
    if jax.process_index() == 0:
      metrics_path.write_text(json.dumps(metrics, indent=2))
  # The stages' own wall times (a skipped stage keeps the time it took when it ran).
  metrics["total_wall_time_s"] = round(sum(metrics[s]["wall_time_s"] for s in STAGES if s in metrics), 2)
  if jax.process_index() == 0:
    metrics_path.write_text(json.dumps(metrics, indent=2))
  return metrics


def summary(metrics: dict, workdir: pathlib.Path) -> str:
  """A few lines for the console: each stage's headline figures and where everything is."""
  lines = [f"Run {workdir}:"]
  for name in STAGES:
    figures = metrics.get(name)
    if not isinstance(figures, dict):
      continue
    shown = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(shown.items())[:8])
    lines.append(f"  {name}: {text}")
  lines.append(f"  metrics: {workdir / 'metrics.json'}; TensorBoard: tensorboard --logdir {workdir}")
  return "\n".join(lines)
