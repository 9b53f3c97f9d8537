"""Timing shared by every system's process (stdlib only): warm up, repeat, median and spread."""

import json
import statistics
import time
from collections.abc import Callable


def measure(run: Callable[[], None], *, warmup: int, repeats: int) -> dict:
  """Seconds of the first call (compile + run), then the median / min / max of `repeats` later calls.

  `run` must block until its result is computed (block_until_ready / a host copy).
  """
  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  for _ in range(warmup):
    run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"first_call_s": round(first, 3), "median_s": round(median, 5), "min_s": round(min(times), 5),
          "max_s": round(max(times), 5), "spread_pct": round(100 * (max(times) - min(times)) / median, 1),
          "repeats": repeats}


def op_profile(seconds: dict[str, float], categories: list[tuple[str, str]], steps: int, top: int = 12) -> dict:
  """Per-step op time of a profiled run: {name: seconds over `steps` steps} -> ms per step by category (the first
  regex of `categories` that matches a name, else 'other') and the `top` ops by name, for side-by-side reading."""
  import re  # pylint: disable=import-outside-toplevel
  by_category = dict.fromkeys([label for label, _ in categories] + ["other"], 0.0)
  for name, s in seconds.items():
    label = next((label for label, pattern in categories if re.search(pattern, name)), "other")
    by_category[label] += s
  per_step = lambda s: round(1e3 * s / steps, 1)
  return {"op_ms_per_step": per_step(sum(seconds.values())),
          "category_ms_per_step": {label: per_step(s) for label, s in by_category.items()},
          "top_ops_ms_per_step": {name: per_step(s)
                                  for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]}}


def emit(result: dict) -> None:
  """The last stdout line of a benchmark process is its JSON result (run.py reads it)."""
  print("RESULT " + json.dumps(result), flush=True)


def parse_args(description: str, argv=None):
  """The flags every system process takes (run.py passes them)."""
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--workload", required=True, help="train | sample | vae | compile | profile")
  parser.add_argument("--size", default="cpu-small")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache (compile workload)")
  parser.add_argument("--variant", default="", help="system-specific option (torch: 'compile', 'channels_last')")
  return parser.parse_args(argv)
