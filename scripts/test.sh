#!/usr/bin/env bash
# Set everything up and run the tests: scripts/test.sh [pytest options]
# The default run skips tests marked `slow`; run those with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest -m "not slow" "$@"
