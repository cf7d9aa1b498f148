#!/usr/bin/env bash
# Set everything up and run the demo on a generated dataset: scripts/demo.sh [OUT_DIR] [demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out="${1:-demo_out}"
shift || true
exec .venv/bin/rhapso-gpu demo --out "$out" "$@"
