"""Virtual environments for the peer systems, built from pinned requirement files outside the repo.

Each peer `NAME` has `benchmarks/peers/NAME.txt`; its environment lives in
`$LATENT_DIFFUSION_BENCH_HOME/venvs/NAME` (default `~/.cache/latent_diffusion_bench`), so git never
sees it and the project's own `.venv` is never touched. An environment is rebuilt when its
requirement file changes (a copy of the file is kept next to it as the stamp).

  python benchmarks/venvs.py [NAME ...]     # build (or check) the environments ('aot', 'aot_diffusers': aot_python)
"""

import os
import pathlib
import subprocess
import sys

PEERS_DIR = pathlib.Path(__file__).resolve().parent / "peers"


def home() -> pathlib.Path:
  """Root of the benchmark's private files (peer venvs, compilation caches)."""
  default = pathlib.Path.home() / ".cache" / "latent_diffusion_bench"
  return pathlib.Path(os.environ.get("LATENT_DIFFUSION_BENCH_HOME", default)).expanduser()


def python_for(name: str) -> pathlib.Path:
  """The interpreter of peer `name`'s environment, creating or updating the environment first."""
  requirements = PEERS_DIR / f"{name}.txt"
  if not requirements.is_file():
    raise FileNotFoundError(f"no pinned requirements for peer {name!r}: {requirements}")
  return _built(home() / "venvs" / name, requirements)


def aot_python(name: str = "aot") -> pathlib.Path:
  """The interpreter of an AOT environment (benchmarks/aot.py): this interpreter's packages plus libtpu.

  A venv whose site-packages also reads ours (a .pth file) and adds what its requirements file pins beyond them
  (libtpu, ~200 MB), so that our own venv never loads libtpu: with it, every JAX process probes for TPU
  chips at start-up. 'aot' (requirements-aot.txt) lives at $LATENT_DIFFUSION_AOT_VENV (default
  <home()>/venvs/aot); 'aot_diffusers' (requirements-aot-diffusers.txt: also diffusers 0.39, the last release
  with Flax models, for benchmarks/aot_diffusers_flax.py on the same jax and libtpu as ours) at
  <home()>/venvs/aot_diffusers. pip installs into the venv only: the overlay's newer diffusers stays as it is.
  """
  if name not in AOT_REQUIREMENTS:
    raise ValueError(f"Unknown AOT environment {name!r}; known: {sorted(AOT_REQUIREMENTS)}.")
  default = home() / "venvs" / name
  venv = pathlib.Path(os.environ.get("LATENT_DIFFUSION_AOT_VENV", default) if name == "aot" else default)
  ours = [p for p in sys.path if p.endswith("site-packages") and pathlib.Path(p).is_dir()]
  return _built(venv.expanduser(), AOT_REQUIREMENTS[name], overlay=ours)


AOT_REQUIREMENTS = {name: pathlib.Path(__file__).resolve().parent / f"requirements-{name.replace('_', '-')}.txt"
                    for name in ("aot", "aot_diffusers")}


def _built(venv: pathlib.Path, requirements: pathlib.Path, overlay: list[str] | None = None) -> pathlib.Path:
  """venv's python after installing `requirements` (skipped when its stamp says they are installed); `overlay`:
  site-packages folders the venv also reads (pip then installs only what they lack)."""
  python = venv / "bin" / "python"
  stamp = venv / "requirements.txt"
  wanted = requirements.read_text() + "".join(f"# overlay {p}\n" for p in overlay or [])
  if python.exists() and stamp.exists() and stamp.read_text() == wanted:
    return python
  print(f"[venvs] building {venv} from {requirements.name}", file=sys.stderr, flush=True)
  base = pathlib.Path(sys.base_prefix) / "bin" / "python3"
  subprocess.run([str(base if overlay else sys.executable), "-m", "venv", "--clear", str(venv)], check=True)
  if overlay:
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(site) / "_overlay.pth").write_text("".join(p + "\n" for p in overlay))
  # The pins in `requirements` are the whole truth for a peer: a machine-wide pip constraint file (pip.conf's
  # `constraint`, e.g. one that holds the project's torch at another release) must not veto them.
  env = {**os.environ, "PIP_CONSTRAINT": os.devnull}
  subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True, env=env)
  stamp.write_text(wanted)
  return python


def main(names: list[str]) -> None:
  for name in names or sorted(p.stem for p in PEERS_DIR.glob("*.txt")):
    print(name, aot_python(name) if name in AOT_REQUIREMENTS else python_for(name))


if __name__ == "__main__":
  main(sys.argv[1:])
