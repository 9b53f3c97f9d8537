"""Markdown table of a benchmarks/run.py results dict (stdlib only).

  python benchmarks/report.py [benchmarks/results/results.json]   # re-print a saved run
"""

import json
import pathlib
import sys

PEERS = (("diffusers_flax", "diffusers-Flax 0.39"), ("diffusers_torch", "diffusers-PyTorch"))


def _get(results: dict, *path):
  for key in path:
    if not isinstance(results, dict) or key not in results:
      return None
    results = results[key]
  return results


def _cell(value, spread=None, fmt="{:.3g}") -> str:
  if value is None:
    return "—"
  return fmt.format(value) + (f" (±{spread / 2:.0f}%)" if spread is not None else "")


def _ratio(ours, peer, higher_is_better: bool) -> str:
  if ours is None or peer is None or not ours or not peer:
    return "—"
  return f"{(ours / peer if higher_is_better else peer / ours):.2f}x"


def _torch_key(workload: dict) -> str | None:
  keys = [k for k in workload if k.startswith("diffusers_torch")]
  return keys[0] if keys else None


def _rows(results: dict) -> list[list[str]]:
  w = results["workloads"]
  rows = []

  def add(label, workload, path, higher, target="", fmt="{:.3g}", spread_path=None):
    cells, values = [], []
    systems = ["ours"] + [name for name, _ in PEERS]
    for system in systems:
      key = _torch_key(w.get(workload, {})) if system == "diffusers_torch" else system
      value = _get(w, workload, key, *path) if key else None
      spread = _get(w, workload, key, *spread_path) if key and spread_path else None
      values.append(value)
      cells.append(_cell(value, spread, fmt))
    rows.append([label, *cells, _ratio(values[0], values[1], higher), _ratio(values[0], values[2], higher), target])

  add("train step, images/s", "train", ["images_per_s"], True, ">= 3x Flax, >= 1.2x PyTorch",
      spread_path=["spread_pct"])
  add("sampling 50 DDIM + CFG + decode, s/image", "sample", ["s_per_image"], False, ">= 1.5x both",
      spread_path=["spread_pct"])
  add("sampling compile, s", "sample", ["compile_s"], False)
  add("VAE encode, images/s", "vae", ["encode", "images_per_s"], True, spread_path=["encode", "spread_pct"])
  add("VAE decode, images/s", "vae", ["decode", "images_per_s"], True, spread_path=["decode", "spread_pct"])
  for name in ("train", "sample"):
    add(f"{name} compile, cold cache, s", "compile", ["cold", f"{name}_compile_s"], False)
    add(f"{name} compile, persistent cache, s", "compile", ["warm", f"{name}_compile_s"], False)
  add("train step peak memory, GB", "train", ["peak_gb"], False, fmt="{:.2f}")
  add("train step FLOPs, own count (XLA cost analysis, loop-free attention), GFLOP", "train", ["gflops"], False, fmt="{:.1f}")
  add("train step MFU, % of matmul peak", "train", ["mfu_pct"], True, ">= 45%", fmt="{:.1f}")
  return rows


def _derive(results: dict) -> None:
  """Adds GB, GFLOP and MFU fields. `gflops` is each system's own count (ours: its step with loop-free attention;
  PyTorch: none of its own). MFU credits every system with the same work, the architecture's FLOPs: diffusers-
  Flax's step (the plain formulation of the same network) if it ran, else ours. Ours does fewer (Upsample's phase
  convolutions take 4/9 of the plain form's multiply-adds), which must not lower its MFU."""
  peak = _get(results, "workloads", "peak", "ours", "peak_gflops")
  train = results["workloads"].get("train", {})
  ours_flops = _get(train, "ours", "model_flops") or _get(train, "ours", "flops")
  architecture_flops = _get(train, "diffusers_flax", "flops") or ours_flops
  for r in train.values():
    if "error" in r:
      continue
    own = r.get("model_flops", r.get("flops"))
    if r.get("peak_bytes"):
      r["peak_gb"] = r["peak_bytes"] / 1e9
    if own:
      r["gflops"] = own / 1e9
    if architecture_flops:
      r["achieved_gflops"] = round(architecture_flops / r["median_s"] / 1e9, 1)
      if peak:
        r["mfu_pct"] = 100 * r["achieved_gflops"] / peak


def _machine(machine: dict) -> str:
  """'CPU model, n of m CPUs used, L2 ... L3 ... (platform)'; results from before the CPU was recorded say so."""
  cpu = machine.get("cpu")
  if cpu is None:
    return f"{machine['cpus']} CPUs, CPU model not recorded ({machine['platform']})"
  caches = ", ".join(f"{level} {size}" for level, size in cpu["caches"].items())
  memory = f", transparent huge pages '{machine['transparent_huge_pages']}'" if "transparent_huge_pages" in machine else ""
  memory += ", free pages reported to the hypervisor" if machine.get("free_page_reporting") else ""
  return (f"{cpu['model']}, {cpu['usable_cpus']} of {cpu['logical_cpus']} CPUs used, {caches or 'caches unknown'}{memory} "
          f"({machine['platform']})")


def markdown(results: dict) -> str:
  _derive(results)
  w = results["workloads"]
  head = ["metric (median, ±half-spread)", "ours", *[label for _, label in PEERS], "ours vs Flax", "ours vs PyTorch",
          "target"]
  lines = [f"Size `{results['size']}`, {results['date']}, {_machine(results['machine'])}; "
           f"full run {results.get('total_s', 0) / 60:.0f} min.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
  peak = _get(w, "peak", "ours")
  if peak and "peak_gflops" in peak:
    lines += ["", f"Measured float32 matmul peak ({peak['n']}^3, XLA): {peak['peak_gflops']} GFLOP/s median, "
              f"{peak['best_gflops']} best."]
  memory = _get(w, "memory", "ours")
  if memory and "error" not in memory:
    lines += ["", "| fsdp (emulated devices) | params + AdamW on device 0, MB | step peak per device, MB "
              "| step temporaries per device, MB |", "|---|---|---|---|"]
    meshes = {n: m for n, m in memory.items() if isinstance(m, dict) and "peak_bytes" in m}
    lines += [f"| {n} | {m['state_bytes_device0'] / 1e6:.0f} | {m['peak_bytes'] / 1e6:.0f} "
              f"| {m['temp_bytes'] / 1e6:.0f} |" for n, m in meshes.items()]
  for encode in w.get("encode", {}).values():
    if isinstance(encode, dict) and "overhead_pct" in encode:
      lines += ["", f"Pre-encoding job, {encode['size']} px images, encoder {encode['channels']}: "
                f"{encode['job_images_per_s']} images/s vs bare encoder {encode['bare_encoder_images_per_s']} "
                f"images/s: overhead {encode['overhead_pct']}% (target <= 10%)."]
  errors = [f"{wl}/{s}" for wl, per in w.items() for s, r in per.items() if isinstance(r, dict) and "error" in r]
  if errors:
    lines += ["", "Failed: " + ", ".join(errors) + " (see results.json)."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "results" / "results.json")
  print(markdown(json.loads(path.read_text())))
