"""Memory for the buffers XLA:CPU allocates at every call: mimalloc keeps them in the process; else glibc huge pages.

XLA:CPU mallocs an executable's temporaries afresh at each call and frees them after it (the cpu-small train step:
one 1.2 GB block; cpu-medium: 2.4 GB). glibc serves a block that large with a new anonymous mapping and unmaps it
at free, so every step starts on untouched 4 KiB pages: ~300,000 page faults per cpu-small step, 0.5 s of kernel
time beside 3.2 s of user time on a family-167 Xeon; at cpu-medium ~630,000, 1.6-3.5 s of kernel time on one core
of an AMD EPYC (Zen 5) (benchmarks/README.md). glibc cannot keep the block: a worker thread's arena grows by at most
64 MiB, so the block falls back to a mapping, and with a single arena (arena_max=1) the time _int_malloc spends
searching it and the threads spend waiting for its lock exceeded the faults it saved.

mimalloc (the cmeel-mimalloc wheel's library, preloaded with LD_PRELOAD) keeps freed memory in its arenas and hands
the same pages to the next call: no faults at all. On the family-167 Xeon the cpu-small train step took 1.78 s
instead of 2.00 s, cpu-medium 3.96 s instead of 4.35 s. Its settings here (MIMALLOC_SETTINGS; a value the
environment already gives is kept): purge_delay -1, never hand freed memory back to the OS (the default, 1 s, returns
the block between 2 s steps: 10,000 faults per step again); arena_max_object_size 64 GiB, so blocks above the
default 2 GiB (cpu-medium's) come from the arenas too instead of being mapped and unmapped at every call. The price
is the one PyTorch's caching allocator pays: the process holds on to its peak memory.

Where mimalloc is not installed (the requirements pin it for Linux): GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc
>= 2.35) makes malloc ask for transparent huge pages on its large blocks (madvise MADV_HUGEPAGE); where the
kernel's THP mode is 'madvise', 2 MiB pages back them: ~2,000 faults per cpu-medium step, 4.0 s on the Zen 5 core
where 4 KiB pages took 6.5-6.9 s. That costs time in a virtual machine whose balloon device reports free pages to
the host (virtio feature VIRTIO_BALLOON_F_REPORTING): the host takes back free 2 MiB blocks about 2 s after the guest
frees them, so a later step faults them in again on the host's side (cpu-small steps alternating between 1.87 s and
3.0-3.1 s on the family-167 guest, 2.04 s on 4 KiB pages); there the jobs stay on 4 KiB pages.

Both are read once, when the process starts. So the jobs that call one executable many times (ldm-train,
ldm-encode: `cli.run_main(own_allocator=True)`) call `relaunch_with_allocator()` first: it re-executes the same
command with allocator_environment() where that changes something. The sampler is left alone: one call runs all its
steps in a loop that reuses its buffers (mimalloc: 5.93-6.06 s per cpu-small image vs 6.07-6.14 s, within noise;
huge pages: 3-4 % slower). Opting out: LD_PRELOAD set, even empty, is left as it is (then GLIBC_TUNABLES decides),
and a GLIBC_TUNABLES that names the tunable too. In a notebook or your own script, start Python with
LD_PRELOAD=<site-packages>/cmeel.prefix/lib/libmimalloc.so MIMALLOC_PURGE_DELAY=-1 (see allocator_environment()).
"""

import importlib.metadata
import os
import pathlib
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "64GiB"}
_MIMALLOC = ("cmeel-mimalloc", "cmeel.prefix/lib/libmimalloc.so")   # distribution, library path inside it
_THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
_MIN_GLIBC = (2, 35)
_VIRTIO_DEVICES = pathlib.Path("/sys/bus/virtio/devices")
_VIRTIO_BALLOON = "0x0005"          # virtio device id of a memory balloon
_BALLOON_F_REPORTING = 5            # feature bit: free page reporting


def mimalloc_library() -> str | None:
  """Path of the mimalloc shared library of the installed cmeel-mimalloc wheel; None where it is not installed
  or the OS has no LD_PRELOAD (not Linux)."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    path = pathlib.Path(importlib.metadata.distribution(_MIMALLOC[0]).locate_file(_MIMALLOC[1]))
  except importlib.metadata.PackageNotFoundError:
    return None
  return str(path) if path.is_file() else None


def thp_mode(path: pathlib.Path = _THP_ENABLED) -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'); None where it does not say."""
  try:
    text = path.read_text()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
  """(2, 36) for glibc 2.36; None for another C library (musl, macOS)."""
  library, version = platform.libc_ver()
  return tuple(int(part) for part in version.split(".")) if library == "glibc" and version else None


def free_page_reporting(devices: pathlib.Path = _VIRTIO_DEVICES) -> bool:
  """Whether a virtio balloon device reports this guest's free pages to the host (the negotiated feature bits in
  sysfs, '0'/'1' per bit from bit 0)."""
  for device in devices.glob("*"):
    try:
      if ((device / "device").read_text().strip() == _VIRTIO_BALLOON
          and (device / "features").read_text()[_BALLOON_F_REPORTING] == "1"):
        return True
    except (OSError, IndexError):
      continue
  return False


def relaunch_environment(environ: dict[str, str], mode: str | None, glibc: tuple[int, ...] | None,
                         reporting: bool, mimalloc: str | None = None) -> dict[str, str] | None:
  """The environment to re-execute with for XLA:CPU's per-call buffers, or None when a relaunch would change nothing
  or cost time. With `mimalloc` (its library's path) and no LD_PRELOAD in `environ`: mimalloc preloaded, with
  MIMALLOC_SETTINGS the environment does not set. Otherwise glibc's huge pages, except with an LD_PRELOAD naming
  mimalloc (relaunched already), THP not in 'madvise' mode ('always' gives them already, 'never' refuses them), a C
  library without the tunable, GLIBC_TUNABLES already naming it (the user's choice, =0 included), or free page
  `reporting` to a hypervisor."""
  if mimalloc is not None and "LD_PRELOAD" not in environ:
    return {**MIMALLOC_SETTINGS, **environ, "LD_PRELOAD": mimalloc}
  tunables = environ.get("GLIBC_TUNABLES", "")
  preloaded = "mimalloc" in environ.get("LD_PRELOAD", "")
  if preloaded or mode != "madvise" or glibc is None or glibc < _MIN_GLIBC or reporting or TUNABLE + "=" in tunables:
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))}


def allocator_environment() -> dict[str, str] | None:
  """relaunch_environment() for this process on this machine."""
  return relaunch_environment(dict(os.environ), thp_mode(), glibc_version(), free_page_reporting(), mimalloc_library())


def relaunch_with_allocator() -> None:
  """Re-executes this process's command line (same interpreter and arguments) in allocator_environment(); returns
  without doing anything when that would change nothing. Call it first thing, before threads start."""
  environment = allocator_environment()
  if environment is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
