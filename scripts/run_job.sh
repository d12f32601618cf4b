#!/usr/bin/env bash
# Fresh machine -> the main job: sets up .venv if needed, starts a local Ray head if none is running, submits
# the Ray Data batch job on the embedded default pair over its default input (speckv/data/job_prompts.jsonl: the
# question-style benchmark mix and the input-grounded tasks), and stops the Ray it started.
# Outputs: runs/batch/outputs/*.parquet and runs/batch/telemetry/*.parquet. Extra arguments go to the job.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# Ray turns token authentication on once ~/.ray/auth_token exists (a local ray.init() or `ray start` may write it);
# the CLI only sends the token when asked to
use_token() { [ -f "$HOME/.ray/auth_token" ] && export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"; return 0; }
use_token
started=0
if ! ray status >/dev/null 2>&1; then
  ray start --head --num-cpus="$(nproc)" --disable-usage-stats >/dev/null
  started=1
  use_token
fi
trap '[ "$started" = 1 ] && ray stop >/dev/null 2>&1 || true' EXIT
ray job submit --working-dir . -- python jobs/batch_generate.py \
  --input "$ROOT/speckv/data/job_prompts.jsonl" --output "$ROOT/runs/batch" --max-new-tokens 64 "$@"
