"""The allocator for XLA:CPU's per-call buffers (mimalloc, else glibc's huge pages): when the jobs relaunch themselves
with which, and that it removes the page faults of each call."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from latent_diffusion import host_memory

GLIBC = (2, 36)
MIMALLOC = "/site-packages/cmeel.prefix/lib/libmimalloc.so"
SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "64GiB"}
# What the probe and the jobs' relaunch read from the environment: removed before each probe.
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES", *SETTINGS)


@pytest.mark.parametrize("mode, glibc, reporting, tunables, expected", [
    ("madvise", GLIBC, False, None, "glibc.malloc.hugetlb=1"),
    ("madvise", GLIBC, False, "glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("madvise", GLIBC, False, "glibc.malloc.hugetlb=0", None),      # the user's opt-out is kept
    ("madvise", GLIBC, False, "glibc.malloc.hugetlb=1", None),      # already relaunched: no loop
    ("always", GLIBC, False, None, None),                           # the kernel gives huge pages anyway
    ("never", GLIBC, False, None, None),                            # nor any at all
    (None, GLIBC, False, None, None),                               # no THP in this kernel / not Linux
    ("madvise", (2, 31), False, None, None),                        # glibc before the tunable
    ("madvise", None, False, None, None),                           # musl, macOS
    ("madvise", GLIBC, True, None, None),                           # the host takes freed huge pages back
])
def test_relaunch_environment(mode, glibc, reporting, tunables, expected):
  environ = {"PATH": "/bin", **({"GLIBC_TUNABLES": tunables} if tunables is not None else {})}
  environment = host_memory.relaunch_environment(environ, mode, glibc, reporting)
  if expected is None:
    assert environment is None
  else:
    assert environment == {"PATH": "/bin", "GLIBC_TUNABLES": expected}


@pytest.mark.parametrize("environ, expected", [
    ({}, {"LD_PRELOAD": MIMALLOC, **SETTINGS}),
    ({"MIMALLOC_PURGE_DELAY": "100"}, {"LD_PRELOAD": MIMALLOC, **SETTINGS, "MIMALLOC_PURGE_DELAY": "100"}),  # kept
    ({"LD_PRELOAD": MIMALLOC, **SETTINGS}, None),                    # relaunched already: no loop
    ({"LD_PRELOAD": ""}, {"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),   # opted out: glibc's way
    ({"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, None),                 # and out of that too
])
def test_relaunch_environment_with_mimalloc_installed(environ, expected):
  environment = host_memory.relaunch_environment({"PATH": "/bin", **environ}, "madvise", GLIBC, False, MIMALLOC)
  assert environment == (None if expected is None else {"PATH": "/bin", **expected})


def test_mimalloc_is_installed_where_the_requirements_pin_it():
  library = host_memory.mimalloc_library()
  if sys.platform.startswith("linux"):
    assert library is not None and library.endswith("libmimalloc.so"), library
    assert {"LD_PRELOAD": library, **SETTINGS}.items() <= host_memory.relaunch_environment(
        {}, None, None, False, library).items()
  else:
    assert library is None


def _virtio_device(root, name: str, device_id: str, features: str) -> None:
  (root / name).mkdir()
  (root / name / "device").write_text(device_id + "\n")
  (root / name / "features").write_text(features.ljust(64, "0") + "\n")


def test_free_page_reporting_reads_the_balloon_feature_bits(tmp_path):
  _virtio_device(tmp_path, "virtio0", "0x0002", "000001")          # a block device: its bit 5 means another thing
  _virtio_device(tmp_path, "virtio1", "0x0005", "0110")            # balloon: stats, deflate-on-OOM, no reporting
  assert not host_memory.free_page_reporting(tmp_path)
  _virtio_device(tmp_path, "virtio2", "0x0005", "01100101")        # bit 5 set, as on a family-167 Xeon guest
  assert host_memory.free_page_reporting(tmp_path)
  assert not host_memory.free_page_reporting(tmp_path / "missing")  # no virtio bus: bare metal, other OSes


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  (tmp_path / "enabled").write_text("always [madvise] never\n")
  assert host_memory.thp_mode(tmp_path / "enabled") == "madvise"
  assert host_memory.thp_mode(tmp_path / "missing") is None


# Minor page faults of the second call of a jitted function with ~0.4 GB of temporaries, after relaunching.
_PROBE = textwrap.dedent("""
    import os, resource
    from latent_diffusion import host_memory
    host_memory.relaunch_with_allocator()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum() + jnp.cumsum(jnp.exp(x), axis=0).sum())
    x = jnp.full((4096, 4096), 0.1)
    f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(repr({name: os.environ[name] for name in %r if name in os.environ}))
    print(faults)
""" % (ALLOCATOR_VARIABLES,))


def _probe(**environ: str) -> tuple[dict[str, str], int]:
  """(allocator variables after the relaunch, page faults) of _PROBE started with `environ` as its allocator
  variables (this process's removed)."""
  env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
  out = subprocess.run([sys.executable, "-c", _PROBE], env={**env, **environ}, capture_output=True, text=True,
                       check=True)
  variables, faults = out.stdout.splitlines()[-2:]
  return ast.literal_eval(variables), int(faults)


def test_the_probe_relaunches_exactly_where_this_machine_calls_for_it():
  expected = host_memory.relaunch_environment({}, host_memory.thp_mode(), host_memory.glibc_version(),
                                              host_memory.free_page_reporting(), host_memory.mimalloc_library())
  variables, _ = _probe()
  assert variables == (expected or {}), (variables, expected)


def test_mimalloc_removes_the_page_faults_of_each_call():
  if host_memory.mimalloc_library() is None:
    pytest.skip("mimalloc is pinned for Linux only")
  variables, faults = _probe()
  glibc_variables, faults_4k = _probe(LD_PRELOAD="", GLIBC_TUNABLES="glibc.malloc.hugetlb=0")  # both opt-outs
  assert variables == {"LD_PRELOAD": host_memory.mimalloc_library(), **SETTINGS}, variables
  assert glibc_variables == {"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, glibc_variables
  assert faults_4k > 10_000, faults_4k                         # ~0.4 GB of fresh 4 KiB pages per call
  assert faults < faults_4k / 10, (faults, faults_4k)


@pytest.mark.skipif(host_memory.relaunch_environment({}, host_memory.thp_mode(), host_memory.glibc_version(),
                                                    reporting=False) is None,
                    reason="this machine's kernel or C library gives no huge pages on request (THP not 'madvise')")
def test_huge_pages_remove_the_page_faults_of_each_call():
  variables, faults = _probe(LD_PRELOAD="", GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
  _, faults_4k = _probe(LD_PRELOAD="", GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  assert variables == {"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, variables
  assert faults_4k > 10_000, faults_4k
  assert faults < faults_4k / 10, (faults, faults_4k)


def test_a_command_line_job_runs_after_relaunching_itself():
  env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
  out = subprocess.run([sys.executable, "-m", "latent_diffusion.cli.encode", "--helpfull"], env=env,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 1 and "--output" in out.stdout, out   # absl's help exits with 1
