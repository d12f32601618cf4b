#!/usr/bin/env bash
# Fresh machine -> test results: sets up .venv if needed, then runs the default (fast) suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the slow checks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python -m pytest -q -m "not slow and not gpu" "$@"
