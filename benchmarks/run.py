"""Benchmarks us against diffusers-Flax 0.39 and diffusers-PyTorch, each workload in its own process.

  python benchmarks/run.py [--size=cpu-small] [--systems=ours,diffusers_flax,diffusers_torch]
                           [--workloads=peak,train,sample,vae,compile,memory,encode] [--repeats=5]

Peers run in venvs built from benchmarks/peers/*.txt under $LATENT_DIFFUSION_BENCH_HOME (default
~/.cache/latent_diffusion_bench). Systems run one after another. Writes benchmarks/results/results.json
and benchmarks/results/table.md, and prints the table. See benchmarks/README.md.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import report  # noqa: E402
import venvs  # noqa: E402

from latent_diffusion import host_cpu, host_memory  # noqa: E402

OURS_PYTHON = pathlib.Path(os.environ.get("LATENT_DIFFUSION_PYTHON", HERE.parent / ".venv" / "bin" / "python"))
SYSTEMS = ("ours", "diffusers_flax", "diffusers_torch")
JAX_SYSTEMS = ("ours", "diffusers_flax")
WORKLOADS = ("peak", "train", "sample", "vae", "compile", "memory", "encode")


def python_for(system: str) -> pathlib.Path:
  return OURS_PYTHON if system == "ours" else venvs.python_for(system)


def run_process(cmd: list, env: dict | None = None, timeout: float = 3600,
                result_file: pathlib.Path | None = None) -> dict:
  """Runs one benchmark process; returns its `RESULT {json}` line, or the JSON it wrote to
  `result_file`, or an error record."""
  print("[run] " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
  start = time.perf_counter()
  proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
                        env={**os.environ, **(env or {})}, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if result_file is not None and not proc.returncode:
    lines = ["RESULT " + result_file.read_text().replace("\n", "")]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    print(f"[run] failed (exit {proc.returncode}): " + "\n".join(tail), file=sys.stderr, flush=True)
    return {"error": "\n".join(tail), "exit_code": proc.returncode}
  result = json.loads(lines[-1][len("RESULT "):])
  result["process_s"] = round(time.perf_counter() - start, 1)
  print(f"[run] {json.dumps(result)}", file=sys.stderr, flush=True)
  return result


def system_cmd(system: str, workload: str, args, **extra) -> list:
  repeats = args.sample_repeats if workload == "sample" else args.repeats
  warmup = args.sample_warmup if workload == "sample" else args.warmup
  cmd = [python_for(system), HERE / "systems" / f"{system}.py", f"--workload={workload}", f"--size={args.size}",
         f"--repeats={repeats}", f"--warmup={warmup}"]
  return cmd + [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]


def run_workload(workload: str, args) -> dict:
  if workload == "peak":
    return {"ours": run_process([OURS_PYTHON, HERE / "matmul_peak.py", f"--n={args.peak_n}"])}
  if workload == "memory":
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return {"ours": run_process([OURS_PYTHON, HERE / "fsdp_memory.py", f"--size={args.size}"], env)}
  if workload == "encode":  # the size's VAE on its images, and a tiny encoder on 64 px images (worst case)
    out = {}
    for key, flags in ((f"ours[{args.size}]", [f"--vae-size={args.size}", "--images=64", "--batch=4"]),
                       ("ours[64px]", [])):
      result_file = HERE / "results" / f"encode_overhead_{key[5:-1]}.json"
      out[key] = run_process([OURS_PYTHON, HERE / "encode_overhead.py", *flags, f"--out={result_file}"],
                             result_file=result_file)
    return out
  out = {}
  for system in args.systems:
    if workload == "compile":
      if system not in JAX_SYSTEMS:
        continue
      with tempfile.TemporaryDirectory() as cache:  # cold process fills the cache, the warm one reads it
        out[system] = {"cold": run_process(system_cmd(system, workload, args, cache_dir=cache)),
                       "warm": run_process(system_cmd(system, workload, args, cache_dir=cache))}
    elif system in ("diffusers_torch", "ours"):
      for variant in (args.torch_variants if system == "diffusers_torch" else args.ours_variants):
        key = system + (f"[{variant}]" if variant else "")
        out[key] = run_process(system_cmd(system, workload, args, variant=variant or "none"))
    else:
      out[system] = run_process(system_cmd(system, workload, args))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="cpu-small", help="cpu-small | cpu-medium | sd15 (benchmarks/configs.py)")
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--repeats", type=int, default=5, help="timed repeats (train, vae)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--sample-repeats", type=int, default=2, help="timed repeats of the 50-step sampler")
  parser.add_argument("--sample-warmup", type=int, default=0, help="untimed runs after the first call")
  parser.add_argument("--torch-variants", default="", help="comma-separated: '' (default), channels_last, compile")
  parser.add_argument("--ours-variants", default="",
                      help="comma-separated config.compiler.cpu_library_fusions settings: '' (= auto), xla_default, ...")
  parser.add_argument("--peak-n", type=int, default=4096)
  parser.add_argument("--out", default=str(HERE / "results"))
  args = parser.parse_args()
  args.systems = [s for s in args.systems.split(",") if s]
  args.torch_variants = args.torch_variants.split(",")
  args.ours_variants = args.ours_variants.split(",")
  unknown = set(args.systems) - set(SYSTEMS) | set(args.workloads.split(",")) - set(WORKLOADS)
  if unknown:
    parser.error(f"unknown systems/workloads {sorted(unknown)}; systems: {SYSTEMS}, workloads: {WORKLOADS}")
  start = time.perf_counter()
  results = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "size": args.size,
             "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": host_cpu.describe().as_dict(),
                         "transparent_huge_pages": host_memory.thp_mode(),
                         "free_page_reporting": host_memory.free_page_reporting()},
             "workloads": {}}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for workload in args.workloads.split(","):
    results["workloads"][workload] = run_workload(workload, args)
    results["total_s"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))  # after each workload: partial runs count
  table = report.markdown(results)
  (out / "table.md").write_text(table)
  print(table)


if __name__ == "__main__":
  main()
