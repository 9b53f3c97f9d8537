"""Wall, user and system seconds and minor page faults of single train steps of ours (getrusage around each call).

  GLIBC_TUNABLES=glibc.malloc.hugetlb=0|1 python benchmarks/step_rusage.py [--size=cpu-small] [--steps=10] [--pause=0]
  LD_PRELOAD=.venv/lib/python3.11/site-packages/cmeel.prefix/lib/libmimalloc.so MIMALLOC_PURGE_DELAY=-1 \
      MIMALLOC_ARENA_MAX_OBJECT_SIZE=64GiB python benchmarks/step_rusage.py      # the jobs' allocator

Shows what a median hides: the kernel's share of a step (zeroing fresh pages, a hypervisor refaulting memory it took
back) and whether steps alternate. --pause sleeps that many seconds before each step, as an evaluation or a
checkpoint between steps would. Runs in the environment it is given (no allocator relaunch: set LD_PRELOAD or
GLIBC_TUNABLES to compare). Prints one line per step, then `RESULT {json}` with the per-step lists and medians.
"""

import argparse
import os
import pathlib
import resource
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "systems"), str(HERE), str(HERE.parent)]

import ours  # noqa: E402
import timing  # noqa: E402


def _usage() -> tuple[float, float, int]:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="cpu-small")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--pause", type=float, default=0.0, help="seconds of sleep before each timed step")
  args = parser.parse_args()
  setup = ours.Setup(args.size)
  step = setup.train_step()
  state, latents, context, key = setup.train_args()
  state, loss = step(state, latents, context, key)      # compile + the first run
  loss.block_until_ready()
  rows = {"wall_s": [], "user_s": [], "sys_s": [], "minor_faults": []}
  for i in range(args.steps):
    time.sleep(args.pause)
    user0, sys0, faults0 = _usage()
    start = time.perf_counter()
    state, loss = step(state, latents, context, key)
    loss.block_until_ready()
    wall = time.perf_counter() - start
    user1, sys1, faults1 = _usage()
    for name, value in zip(rows, (round(wall, 3), round(user1 - user0, 2), round(sys1 - sys0, 2), faults1 - faults0)):
      rows[name].append(value)
    print(f"step {i}: wall {wall:.3f} s, user {user1 - user0:.2f} s, sys {sys1 - sys0:.2f} s, "
          f"{faults1 - faults0} minor faults", flush=True)
  timing.emit({"size": args.size, "pause_s": args.pause, "ld_preload": os.environ.get("LD_PRELOAD", ""),
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
               **rows, **{f"median_{name}": statistics.median(values) for name, values in rows.items()}})


if __name__ == "__main__":
  main()
