"""What the host CPU is: model name, cores this process may use, and data-cache sizes (Linux sysfs).

Used to size cache-blocked CPU kernels (models/attention.py) and to label every benchmark figure with the CPU it
was measured on (benchmarks/run.py). Where sysfs does not say (other systems, some containers), the caches are
None and callers use their documented fallbacks.
"""

import dataclasses
import functools
import os
import pathlib
import platform

_SYSFS_CACHES = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")


@dataclasses.dataclass(frozen=True)
class Cache:
  """One data (or unified) cache level as cpu0 sees it."""
  level: int
  size_bytes: int
  shared_by: int   # logical CPUs sharing one instance of it


@dataclasses.dataclass(frozen=True)
class HostCpu:
  model: str
  logical_cpus: int
  usable_cpus: int         # in this process's affinity mask (taskset, cgroup cpusets)
  caches: tuple[Cache, ...]

  def cache(self, level: int) -> Cache | None:
    return next((c for c in self.caches if c.level == level), None)

  def as_dict(self) -> dict:
    """JSON-friendly: model, cpu counts and 'L<n>' -> '<KiB> KiB x <shared_by>' per level."""
    return {"model": self.model, "logical_cpus": self.logical_cpus, "usable_cpus": self.usable_cpus,
            "caches": {f"L{c.level}": f"{c.size_bytes >> 10} KiB shared by {c.shared_by}" for c in self.caches}}


def _size_bytes(text: str) -> int:
  """sysfs cache size ('512K', '32768K', '2M') -> bytes."""
  text = text.strip()
  units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
  return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _cpu_count(cpu_list: str) -> int:
  """'0-3,8' -> 5."""
  count = 0
  for part in cpu_list.strip().split(","):
    first, _, last = part.partition("-")
    count += int(last or first) - int(first) + 1
  return count


def _read_caches(root: pathlib.Path) -> tuple[Cache, ...]:
  caches = []
  for index in sorted(root.glob("index[0-9]*")):
    if (index / "type").read_text().strip() == "Instruction":
      continue
    caches.append(Cache(int((index / "level").read_text()), _size_bytes((index / "size").read_text()),
                        _cpu_count((index / "shared_cpu_list").read_text())))
  return tuple(sorted(caches, key=lambda c: c.level))


def _model_name() -> str:
  """The CPU's name from /proc/cpuinfo (see `name_from_cpuinfo`), or what `platform` knows elsewhere."""
  try:
    return name_from_cpuinfo(pathlib.Path("/proc/cpuinfo").read_text())
  except OSError:
    return platform.processor() or platform.machine()


def name_from_cpuinfo(text: str) -> str:
  """'model name (family F model M, widest SIMD[ + AMX])' from /proc/cpuinfo's first processor: hypervisors often
  shorten the name ('AMD EPYC', 'Intel Xeon Processor'), family / model tell the generation, and the vector width
  (and AMX tiles, which PyTorch's oneDNN uses for bf16 and XLA:CPU does not) decide what the kernels can reach."""
  fields = {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)}
  flags = set(fields.get("flags", "").split())
  simd = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON"))
               if flag in flags), "no AVX")
  if "amx_tile" in flags:
    simd += " + AMX"
  name = fields.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in fields:
    return f"{name} (family {fields['cpu family']} model {fields.get('model', '?')}, {simd})"
  return f"{name} ({simd})"


@functools.cache
def describe(cache_root: pathlib.Path = _SYSFS_CACHES) -> HostCpu:
  """The host CPU (read once per process)."""
  try:
    caches = _read_caches(cache_root)
  except (OSError, ValueError):
    caches = ()
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  return HostCpu(_model_name(), os.cpu_count() or 1, usable, caches)
