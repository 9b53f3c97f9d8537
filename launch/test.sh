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
# Huge pages for XLA:CPU's per-call buffers (latent_diffusion/host_memory.py), set here once: else every
# command-line job a test starts would re-execute itself to get them.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
python -m pytest -q -n 2 --dist loadscope "$@"
