"""One process of a toy training job (tests/robustness/toy_stage.py) through the real loop.

  python -m tests.robustness.toy_worker COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR TRAIN_STEPS OUT \
      [EXAMPLE_DELAY_S]

NUM_PROCESSES=1 runs without jax.distributed (COORDINATOR is ignored). Writes OUT.<process>.json:
{"history": [...], "preempted_at": step or null}; process 0 also writes OUT.npz with the final
parameters. A Preempted exit keeps its exit code. EXAMPLE_DELAY_S slows data loading per example so
that a test can signal the job mid-run.
"""

import json
import sys
import time


def main(coordinator: str, num_processes: int, process_id: int, workdir: str, train_steps: int, out: str,
         example_delay: float = 0.0):
  from latent_diffusion import parallel, preemption

  if num_processes > 1:
    parallel.initialize_distributed(coordinator, num_processes, process_id)
  preemption.install()
  import jax
  import numpy as np

  from latent_diffusion.training import loop
  from tests.robustness import toy_stage

  config = toy_stage.toy_config(train_steps=train_steps, checkpoint_every_steps=20, log_every_steps=1)
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
    with open(f"{out}.{jax.process_index()}.json", "w") as f:
      json.dump(record, f)
  gather = jax.jit(lambda p: p, out_shardings=parallel.replicated(stage.mesh))
  params = jax.tree.map(np.asarray, gather(state.params))
  if jax.process_index() == 0:
    np.savez(f"{out}.npz", **{jax.tree_util.keystr(path): leaf
                              for path, leaf in jax.tree_util.tree_leaves_with_path(params)})


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6],
       *(float(a) for a in sys.argv[7:]))
