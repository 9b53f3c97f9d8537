# Sourced by the local scripts: creates (once) and activates .venv with the pinned requirements and this
# package installed editable (`pip install -e .`: the ldm-* console scripts, imports from any directory).
# Usage: source launch/setup_env.sh [requirements file, default requirements.txt]
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_requirements="${1:-requirements.txt}"
_python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$_repo/.venv/bin/python" ]; then
  echo "Creating $_repo/.venv with $("$_python" --version)"
  "$_python" -m venv "$_repo/.venv"
fi
# shellcheck disable=SC1091
source "$_repo/.venv/bin/activate"
_hash="$(cat "$_repo"/requirements*.txt "$_repo/pyproject.toml" | sha1sum | cut -c1-12)"
_stamp="$_repo/.venv/.installed-$(basename "$_requirements")-$_hash"
# requirements-test.txt includes requirements.txt: a test install serves the jobs too.
if [ ! -f "$_stamp" ] && [ ! -f "$_repo/.venv/.installed-requirements-test.txt-$_hash" ]; then
  python -m pip install --quiet pip==26.3
  python -m pip install --quiet -r "$_repo/$_requirements"
  python -m pip install --quiet --no-deps -e "$_repo"
  touch "$_stamp"
fi
cd "$_repo"
