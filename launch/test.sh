#!/usr/bin/env bash
# The test suite on a fresh machine (Python 3.11 + pip): install, then run pytest.
#   bash launch/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-test.txt
python -m pytest -q "$@"
