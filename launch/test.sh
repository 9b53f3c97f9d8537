#!/usr/bin/env bash
# The test suite on a fresh machine (Python 3.11 + pip): install, then run pytest.
#   bash launch/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-test.txt
# torch's CUDA wheel brings triton (GPU kernels only), whose library crashes the process when it loads after
# TensorFlow's (clu, tfds); torch runs without it on the CPU.
python -m pip uninstall --quiet --yes triton 2>/dev/null || true
# Two pytest-xdist workers, each test module (and its fixtures) on one: the suite is mostly single-threaded XLA
# compiles and subprocess jobs, so two cores run it in about two thirds of the time of one worker.
# Huge pages for XLA:CPU's per-call buffers where the jobs would relaunch themselves for them
# (latent_diffusion/host_memory.py), decided here once: else every command-line job a test starts would re-execute.
GLIBC_TUNABLES="${GLIBC_TUNABLES:-$(python -c 'from latent_diffusion import host_memory
environment = host_memory.huge_page_environment()
print(environment["GLIBC_TUNABLES"] if environment else "")')}"
export GLIBC_TUNABLES
python -m pytest -q -n 2 --dist loadscope "$@"
