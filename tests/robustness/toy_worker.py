"""One process of a toy training job (tests/robustness/toy_stage.py) through the real loop.

  python -m tests.robustness.toy_worker COORDINATOR NUM_PROCESSES PROCESS_ID TRAIN_STEPS EXAMPLE_DELAY_S WORKDIR...

NUM_PROCESSES=1 runs without jax.distributed (COORDINATOR is ignored). Trains (or resumes) each
WORKDIR in turn; for each writes WORKDIR.<process>.json: {"history": [...], "preempted_at": step or
null}, and process 0 WORKDIR.npz with the final parameters. A Preempted exit keeps its exit code.
EXAMPLE_DELAY_S (> 0) slows data loading per example so that a test can signal the job mid-run.
"""

import json
import sys
import time


def main(coordinator: str, num_processes: int, process_id: int, train_steps: int, example_delay: float,
         *workdirs: str):
  from latent_diffusion import parallel, preemption

  if num_processes > 1:
    parallel.initialize_distributed(coordinator, num_processes, process_id)
  preemption.install()
  import jax
  import numpy as np

  from latent_diffusion.training import loop
  from tests.robustness import toy_stage

  config = toy_stage.toy_config(train_steps=train_steps, checkpoint_every_steps=20, log_every_steps=1)
  for workdir in workdirs:
    stage = toy_stage.toy_stage(config, workdir)
    if example_delay:
      stage.dataset = stage.dataset.map(lambda example: (time.sleep(example_delay), example)[1])
    record = {"history": [], "preempted_at": None}
    try:
      state, _, record["history"] = loop.train_stage(stage)
    except preemption.Preempted as stopped:
      record["preempted_at"] = stopped.step
      raise
    finally:
      with open(f"{workdir}.{jax.process_index()}.json", "w") as f:
        json.dump(record, f)
    gather = jax.jit(lambda p: p, out_shardings=parallel.replicated(stage.mesh))
    params = jax.tree.map(np.asarray, gather(state.params))
    if jax.process_index() == 0:
      np.savez(f"{workdir}.npz", **{jax.tree_util.keystr(path): leaf
                                    for path, leaf in jax.tree_util.tree_leaves_with_path(params)})


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), *sys.argv[6:])
