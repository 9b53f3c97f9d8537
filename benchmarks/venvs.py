"""Virtual environments for the peer systems, built from pinned requirement files outside the repo.

Each peer `NAME` has `benchmarks/peers/NAME.txt`; its environment lives in
`$LATENT_DIFFUSION_BENCH_HOME/venvs/NAME` (default `~/.cache/latent_diffusion_bench`), so git never
sees it and the project's own `.venv` is never touched. An environment is rebuilt when its
requirement file changes (a copy of the file is kept next to it as the stamp).

  python benchmarks/venvs.py [NAME ...]     # build (or check) the environments
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
  venv = home() / "venvs" / name
  python = venv / "bin" / "python"
  stamp = venv / "requirements.txt"
  wanted = requirements.read_text()
  if python.exists() and stamp.exists() and stamp.read_text() == wanted:
    return python
  print(f"[venvs] building {venv} from {requirements.name}", file=sys.stderr, flush=True)
  subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
  subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
  stamp.write_text(wanted)
  return python


def main(names: list[str]) -> None:
  for name in names or sorted(p.stem for p in PEERS_DIR.glob("*.txt")):
    print(name, python_for(name))


if __name__ == "__main__":
  main(sys.argv[1:])
