#!/usr/bin/env bash
# The test suite on a fresh machine (Python 3.11 + pip): install, then run pytest.
#   bash launch/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-test.txt
# torch's CUDA wheel brings triton (GPU kernels only), whose library crashes the process when it loads after
# TensorFlow's (clu, tfds); torch runs without it on the CPU.
python -m pip uninstall --quiet --yes triton 2>/dev/null || true
# The allocator the train and encode jobs relaunch themselves with (mimalloc, else glibc's huge pages where they pay;
# latent_diffusion/host_memory.py), set here once for the whole run: else every command-line job a test starts would
# re-execute. Variables already set are kept (LD_PRELOAD= opts out of mimalloc).
eval "$(python -c 'import os, shlex
from latent_diffusion import host_memory
for name, value in (host_memory.allocator_environment() or {}).items():
  if os.environ.get(name) != value:
    print(f"export {name}={shlex.quote(value)}")')"
# Two pytest-xdist workers, each test module (and its fixtures) on one: the suite is mostly single-threaded XLA
# compiles and subprocess jobs, so two cores run it in about two thirds of the time of one worker.
python -m pytest -q -n 2 --dist loadscope "$@"
