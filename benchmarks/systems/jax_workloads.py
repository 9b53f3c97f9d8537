"""The timed workloads of the JAX systems (ours, diffusers-Flax), shared by both.

A system module supplies a `Setup` with train_step() / train_args(), sample_fn() / sample_args(),
encode_fn() / decode_fn() over images / vae_latents with vae_params, and cfg (batch sizes); this
module compiles, times and reports them identically. Imports only jax and benchmarks/timing.py,
so it runs in the peers' venvs too.
"""

import bisect
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax

import timing


def compiled_stats(compiled) -> dict:
  """FLOPs (XLA cost analysis) and memory (bytes) of a compiled executable."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  mem = compiled.memory_analysis()
  out = {"flops": float(cost.get("flops", 0.0))}
  if mem is not None:
    out.update(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
               temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
               peak_bytes=mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)
  return out


def run_train(s, args) -> dict:
  state, latents, context, key = s.train_args()
  compiled = s.train_step().lower(state, latents, context, key).compile()
  box = [state]

  def run():
    box[0], loss = compiled(box[0], latents, context, key)
    loss.block_until_ready()

  result = timing.measure(run, warmup=args.warmup, repeats=args.repeats)
  result.update(compiled_stats(compiled), images_per_s=round(s.cfg["train_batch"] / result["median_s"], 3))
  if hasattr(s, "model_flops"):  # a system whose executable hides FLOPs in loops counts them separately
    result["model_flops"] = s.model_flops()
  return result


def run_sample(s, args) -> dict:
  sargs = s.sample_args()
  start = time.perf_counter()
  compiled = s.sample_fn().lower(*sargs).compile()
  compile_s = time.perf_counter() - start
  result = timing.measure(lambda: compiled(*sargs).block_until_ready(), warmup=args.warmup, repeats=args.repeats)
  result.update(compile_s=round(compile_s, 2), s_per_image=round(result["median_s"] / s.cfg["sample_batch"], 4),
                flops=compiled_stats(compiled)["flops"])
  return result


def run_vae(s, args) -> dict:
  out = {}
  for name, fn, x in (("encode", s.encode_fn(), s.images), ("decode", s.decode_fn(), s.vae_latents)):
    r = timing.measure(lambda f=fn, x=x: f(s.vae_params, x).block_until_ready(), warmup=args.warmup,
                       repeats=args.repeats)
    out[name] = {**r, "images_per_s": round(s.cfg["vae_batch"] / r["median_s"], 3)}
  return out


def run_compile(s, args) -> dict:
  """Seconds to lower + compile the train step and the sampler (with the persistent cache if given)."""
  out = {}
  for name, fn, fargs in (("train", s.train_step(), s.train_args()), ("sample", s.sample_fn(), s.sample_args())):
    start = time.perf_counter()
    fn.lower(*fargs).compile()
    out[f"{name}_compile_s"] = round(time.perf_counter() - start, 2)
  return out


# XLA:CPU thunk names (numbered suffix dropped) -> what they compute; thunks inside while loops are our blocked
# attention (cpu_blocked runs its blocks in loops; nothing else in the train step loops).
XLA_CATEGORIES = [("in while loops (blocked attention)", r"^loop/"),
                  ("convolutions (Eigen)", r"^(convolution|conv_general_dilated)"),
                  ("YNNPACK fusions (dots, reductions)", r"^ynn_fusion"),
                  ("dots (Eigen)", r"^dot"),
                  ("copies, transposes, concatenations", r"copy|transpose|concatenate")]
_CONTAINERS = re.compile(r"^(ThunkExecutor|while|conditional|call|\$|PjitFunction|CommonPjRt|ParseArguments|end: )")


def run_profile(s, args) -> dict:
  """Op time of `args.repeats` train steps by XLA:CPU thunk (jax.profiler trace), after `args.warmup` steps:
  where a step's time goes, to set against diffusers_torch.py's torch.profiler breakdown."""
  state, latents, context, key = s.train_args()
  compiled = s.train_step().lower(state, latents, context, key).compile()
  for _ in range(1 + args.warmup):
    state, loss = compiled(state, latents, context, key)
  loss.block_until_ready()
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(args.repeats):
        state, loss = compiled(state, latents, context, key)
      loss.block_until_ready()
    with gzip.open(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]) as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  if not any(e["name"].startswith("ThunkExecutor") for e in events):  # e.g. jax 0.6.2 (the diffusers-Flax venv)
    raise RuntimeError(f"jax {jax.__version__}'s CPU profiler recorded no XLA:CPU thunks, so there is no op time to "
                       f"report: the profile workload needs a jaxlib with the thunk runtime (ours: 0.10.2).")
  loops = []   # [start, end) of the outermost while loops (any thread), in order; thunks inside run on any thread
  for e in sorted((e for e in events if e["name"].startswith("while")), key=lambda e: (e["ts"], -e["dur"])):
    if not loops or e["ts"] >= loops[-1][1]:
      loops.append((e["ts"], e["ts"] + e["dur"]))

  def in_loop(e) -> bool:
    i = bisect.bisect_right(loops, (e["ts"], float("inf"))) - 1
    return i >= 0 and e["ts"] < loops[i][1]

  seconds = collections.Counter()
  for e in events:
    if not _CONTAINERS.match(e["name"]):
      seconds[("loop/" if in_loop(e) else "") + re.sub(r"\.\d+$", "", e["name"])] += e["dur"] * 1e-6
  return timing.op_profile(seconds, XLA_CATEGORIES, steps=args.repeats)


WORKLOADS = {"train": run_train, "sample": run_sample, "vae": run_vae, "compile": run_compile, "profile": run_profile}


def main(doc: str, setup_cls, system_info: dict, apply_variant=None) -> None:
  """Parses the shared flags, runs one workload of `setup_cls(size)` and prints its RESULT line;
  apply_variant(variant) sets a system-specific --variant up first."""
  args = timing.parse_args(doc.splitlines()[0])
  if apply_variant is not None:
    system_info = {**system_info, "variant": apply_variant(args.variant)}
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  timing.emit({**system_info, "jax": jax.__version__, **WORKLOADS[args.workload](setup_cls(args.size), args)})
