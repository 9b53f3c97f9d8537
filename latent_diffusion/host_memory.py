"""Transparent huge pages for the buffers XLA:CPU allocates at every call (glibc's `malloc.hugetlb` tunable).

XLA:CPU mallocs an executable's temporaries afresh at each call and frees them after it (the cpu-medium train step:
one 2.4 GB block). glibc serves a block that large with a new anonymous mapping, so every step starts on untouched
4 KiB pages: ~630,000 page faults per cpu-medium step, 1.6-3.5 s of kernel time on one core of an AMD EPYC (Zen 5),
where the whole step then takes 6.5-6.9 s, plus 4 KiB-page TLB misses in the kernels that stride through big buffers
(benchmarks/README.md, "huge pages for XLA:CPU's per-call buffers"). With GLIBC_TUNABLES=glibc.malloc.hugetlb=1
(glibc >= 2.35) malloc asks the kernel for transparent huge pages on its large blocks (madvise MADV_HUGEPAGE); where
the kernel's THP mode is 'madvise', 2 MiB pages back them and the same step faults ~2,000 times and takes 4.0 s on
that core.

glibc reads its tunables once, when the process starts. So the jobs that call one executable many times (ldm-train,
ldm-encode: `cli.run_main(huge_pages=True)`) call `relaunch_with_huge_pages()` first: it re-executes the same
command with the tunable added where that changes something (THP mode 'madvise', glibc >= 2.35, the tunable not
already set) and is not known to cost time. It does cost time in a virtual machine whose balloon device reports free
pages to the host (virtio feature VIRTIO_BALLOON_F_REPORTING): the host takes back free 2 MiB blocks about 2 s after
the guest frees them, so the huge pages one step frees are faulted in again, on the host's side, by a later step. On
a family-167 Xeon guest, cpu-small train steps then alternated between 1.87 s and 3.0-3.1 s (2.04 s on 4 KiB pages),
and a pause of 3 s before each cpu-medium step made it 5.3-6.5 s instead of 3.9 s (4.4 s on 4 KiB pages); there the
jobs stay on 4 KiB pages. The sampler is left alone everywhere: one call runs all its steps in a loop that reuses its
buffers, and it ran 3-4 % slower with huge pages. To opt out, set GLIBC_TUNABLES=glibc.malloc.hugetlb=0 (=1 to opt
in on a reporting host): a GLIBC_TUNABLES that names the tunable is left as it is. In a notebook or your own script,
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1 before starting Python.
"""

import os
import pathlib
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
_THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
_MIN_GLIBC = (2, 35)
_VIRTIO_DEVICES = pathlib.Path("/sys/bus/virtio/devices")
_VIRTIO_BALLOON = "0x0005"          # virtio device id of a memory balloon
_BALLOON_F_REPORTING = 5            # feature bit: free page reporting


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
                         reporting: bool) -> dict[str, str] | None:
  """The environment to re-execute with so that malloc's large blocks get huge pages, or None when a relaunch would
  change nothing or cost time: THP not in 'madvise' mode ('always' gives them already, 'never' refuses them), a C
  library without the tunable, GLIBC_TUNABLES already naming it (the user's choice, =0 included), or free page
  `reporting` to a hypervisor."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if mode != "madvise" or glibc is None or glibc < _MIN_GLIBC or reporting or TUNABLE + "=" in tunables:
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))}


def huge_page_environment() -> dict[str, str] | None:
  """relaunch_environment() for this process on this machine."""
  return relaunch_environment(dict(os.environ), thp_mode(), glibc_version(), free_page_reporting())


def relaunch_with_huge_pages() -> None:
  """Re-executes this process's command line (same interpreter and arguments) with GLIBC_TUNABLES set as above;
  returns without doing anything when that would change nothing. Call it first thing, before threads start."""
  environment = huge_page_environment()
  if environment is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
