"""TPU topologies on a CPU host: their devices (libtpu compiles for them), chip figures, HLO collectives.

Needs only jax (with libtpu installed); shared by benchmarks/aot.py and benchmarks/aot_diffusers_flax.py, which
run in different venvs.
"""

import math
import os
import re

from jax.experimental import topologies

# libtpu takes /tmp/libtpu_lockfile, so that one process owns a host's chips; compiles for a topology own no chip,
# and without this a second AOT process (another user's, a test's) fails at start-up.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GiB = 1 << 30
# Per chip: HBM bytes and peak dense bf16 FLOP/s (Cloud TPU system architecture pages: v4, v5e, v5p, v6e).
CHIPS = {"v4": (32 * GiB, 275e12), "v5e": (16 * GiB, 197e12), "v5p": (95 * GiB, 459e12), "v6e": (32 * GiB, 918e12)}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLLECTIVE_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
# An instruction producing a collective's result: the synchronous op or the -done of an async pair (whose -start's
# type also holds the operands); group 1 its result type, group 2 the collective.
_COLLECTIVE_RESULT = re.compile(r"^\s*(?:ROOT )?%\S+ = (.*?) (" + "|".join(COLLECTIVES) + r")(?:-done)?\(", re.M)
_ARRAY_TYPE = re.compile(r"\b(pred|bf16|f16|f32|f64|s8|s16|s32|s64|u8|u16|u32|u64|c64|c128)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}


def topology_devices(name: str) -> list:
  """The devices of TPU topology `name` ('v5p:2x2x1', 'v6e:4x4', ...), compiled for by libtpu on any host."""
  return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)


def chip_spec(topology: str) -> tuple[int, float]:
  """(HBM bytes, peak bf16 FLOP/s) of one chip of `topology` (CHIPS by its generation prefix)."""
  generation = topology.split(":")[0]
  if generation not in CHIPS:
    raise ValueError(f"No chip figures for {generation!r} (topology {topology!r}); known: {sorted(CHIPS)}.")
  return CHIPS[generation]


def count_collectives(hlo_text: str) -> dict[str, int]:
  """{collective: number of such ops} in an HLO module's text (async -start ops counted once)."""
  counts = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE_OP.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """{collective: bytes of its results, summed over such ops} in an HLO module's text, per chip: an all-reduce's
  result is the reduced array (e.g. the gradients), an all-gather's the gathered one. Async pairs count once."""
  totals = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE_RESULT.finditer(hlo_text):
    for dtype, dims in _ARRAY_TYPE.findall(match.group(1)):
      totals[match.group(2)] += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return totals


def compiled_figures(compiled, topology: str, devices: list, global_batch: int) -> dict:
  """Per-chip figures of an executable compiled for `devices` of `topology` (one training step of global_batch
  examples): memory_analysis bytes vs the chip's HBM, cost_analysis FLOPs and cost-model seconds (XLA's estimate,
  not a measurement) -> images/s/chip and MFU against the chip's peak bf16 FLOP/s, collectives in the HLO."""
  hbm, peak_flops = chip_spec(topology)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
  seconds = float(cost.get("optimal_seconds", -1.0))
  chips = len(devices)
  hlo = compiled.as_text()
  valid = seconds > 0            # the cost model answers -1 for programs it cannot estimate
  return {
      "chips": chips, "device_kind": devices[0].device_kind,
      "hbm_arguments_gib": mem.argument_size_in_bytes / GiB, "hbm_outputs_gib": mem.output_size_in_bytes / GiB,
      "hbm_temporaries_gib": mem.temp_size_in_bytes / GiB, "hbm_peak_gib": peak / GiB, "hbm_chip_gib": hbm / GiB,
      "fits": bool(peak <= hbm), "flops": float(cost["flops"]), "cost_model_s": seconds if valid else None,
      "images_per_s_per_chip": global_batch / chips / seconds if valid else None,
      "mfu": float(cost["flops"]) / seconds / peak_flops if valid else None,
      "collectives": count_collectives(hlo), "collective_bytes": collective_bytes(hlo),
  }
