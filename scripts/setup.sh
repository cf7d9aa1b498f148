#!/usr/bin/env bash
# Create ./.venv if needed and install rhapso-gpu into it (editable) with the given extras.
# Usage: scripts/setup.sh [EXTRAS]    e.g. scripts/setup.sh test   or   scripts/setup.sh test,gpu
# A machine with an NVIDIA GPU (nvidia-smi lists one) also gets the `gpu` extra (CuPy, dask-cuda).
# Re-runs are quick: nothing is installed again until pyproject.toml or the extras change.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
if [ -z "${RHAPSO_NO_GPU:-}" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  extras="${extras:+$extras,}gpu"
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rhapso-gpu needs Python >= 3.11 (set PYTHON=...)")'
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi

stamp=".venv/.rhapso-setup"
want="$(sha256sum pyproject.toml | cut -c1-16) [${extras}]"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing rhapso-gpu${extras:+[$extras]} into .venv (first run takes a minute or two)"
  quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | quiet
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" 2>&1 | quiet
  .venv/bin/python -c "import rhapso_gpu" # fail here, loudly, if the install did not work
  echo "$want" > "$stamp"
fi
