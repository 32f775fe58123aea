#!/usr/bin/env bash
# tests/parity/run_parity.sh — fp32 parity of `drt eval` against the independent PyTorch reference
# (tests/parity/drt_reference.py). Run from anywhere, on a machine with cmake, a C++20 compiler,
# Eigen, nlohmann-json and python3 with torch and numpy (the GPU machine has them;
# the reference itself runs on the CPU).
#
#   bash tests/parity/run_parity.sh            # the two configs of the issue
#   PARITY_EXTRA=1 bash tests/parity/run_parity.sh   # also L_c = 64 (landmark row dropped, S % 64 == 1)
#   PARITY_DEBS=.debs bash tests/parity/run_parity.sh  # unpack carried .deb files first (see README.md)
#
# Builds drt_tool in Release under build-parity/, then for each config: make (weights, tokens,
# reference results) -> drt eval (loss, logits, gradients) -> compare (bars: loss 1e-5 relative,
# logits 1e-4 absolute, gradients 1e-3 relative L2). Exit status 0 only if every config passes.
# Logs go to $OUT when it is set (build.log, <config>.txt with each comparison table), else to
# build-parity/parity/.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BUILD=${PARITY_BUILD:-build-parity}  # build folder (relative to the repository root, or absolute)
WORK=$BUILD/parity
LOGDIR=${OUT:-$WORK}
PY=${PYTHON:-python3}
REF=tests/parity/drt_reference.py
mkdir -p "$WORK" "$LOGDIR"

echo "== parity: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores"
"$PY" -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__)' || {
  echo "error: $PY needs torch and numpy (safetensors is used when installed)"; exit 2; }

# Optional: a folder of .deb files (PARITY_DEBS, e.g. libpcre2-dev and libpcre2-8-0 for a machine
# without PCRE2's development files, which CMakeLists.txt finds through pkg-config) is unpacked
# under build-parity/sysroot and put first on pkg-config's path, with the .pc prefixes rewritten.
if [ -n "${PARITY_DEBS:-}" ]; then
  mkdir -p "$BUILD"
  SYSROOT=$(cd "$BUILD" && pwd)/sysroot
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT"
  for deb in "$PARITY_DEBS"/*.deb; do
    [ -e "$deb" ] || { echo "error: no .deb files in PARITY_DEBS=$PARITY_DEBS"; exit 2; }
    dpkg -x "$deb" "$SYSROOT" || { echo "error: cannot unpack $deb"; exit 2; }
  done
  pcdirs=$(find "$SYSROOT" -type d -name pkgconfig | paste -sd: -)
  find "$SYSROOT" -name '*.pc' -exec sed -i "s|^prefix=/usr|prefix=$SYSROOT/usr|" {} +
  export PKG_CONFIG_PATH=$pcdirs${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  libdirs=$(find "$SYSROOT" -name '*.so*' -printf '%h\n' | sort -u | paste -sd: -)
  export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "== unpacked $(ls "$PARITY_DEBS"/*.deb | wc -l) .deb file(s) from $PARITY_DEBS; PKG_CONFIG_PATH=$PKG_CONFIG_PATH"
fi

echo "== build drt_tool (Release) -> $LOGDIR/build.log"
if ! { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDRT_BUILD_TESTS=OFF -DDRT_BUILD_BENCHMARKS=OFF \
         -DDRT_ENABLE_CUDA=OFF && cmake --build "$BUILD" --target drt_tool -j16; } >"$LOGDIR/build.log" 2>&1; then
  tail -n 60 "$LOGDIR/build.log"
  echo "error: build failed"
  exit 2
fi
DRT=$BUILD/tools/drt
[ -x "$DRT" ] || { echo "error: $DRT not found after the build"; exit 2; }

# name | config | token count (a multiple of L_c) | seed
CASES=(
  "unittest|tests/data/config_unittest.json|756|1234"   # 12 chunks: 768 positions > W+1 = 513, 11 landmarks > k = 8
  "small|tests/parity/config_small.json|504|4321"       # 8 chunks, k = 3, W = 40, GQA 4:2, groups [2, 1]
)
if [ "${PARITY_EXTRA:-0}" = 1 ]; then
  CASES+=("small_lc64|tests/parity/config_small_lc64.json|512|999")  # L_c = 64: landmark row dropped
fi

status=0
summary=()
for case in "${CASES[@]}"; do
  IFS='|' read -r name config ntok seed <<<"$case"
  dir=$WORK/$name
  rm -rf "$dir"
  mkdir -p "$dir"
  report=$LOGDIR/$name.txt
  echo
  echo "== $name: $config, $ntok tokens, seed $seed"
  {
    echo "# $name: $config, $ntok tokens, seed $seed"
    if ! "$PY" "$REF" make --config "$config" --out "$dir" --seed "$seed" --tokens "$ntok"; then
      echo "RESULT $name: reference 'make' failed"
      exit 3
    fi
    echo "-- drt eval"
    if ! "$DRT" eval --config "$config" --weights "$dir/weights.safetensors" --tokens "$dir/tokens.npy" \
        --dump-logits "$dir/drt_logits.npy" --dump-grads "$dir/drt_grads.safetensors" >"$dir/drt_eval.out" 2>&1; then
      cat "$dir/drt_eval.out"
      echo "RESULT $name: drt eval failed"
      exit 4
    fi
    cat "$dir/drt_eval.out"
    loss=$(awk '$1 == "loss" { print $2; exit }' "$dir/drt_eval.out")
    [ -n "$loss" ] || { echo "RESULT $name: no 'loss <value>' line in drt eval's output"; exit 4; }
    echo "-- compare"
    "$PY" "$REF" compare --dir "$dir" --drt-logits "$dir/drt_logits.npy" --drt-grads "$dir/drt_grads.safetensors" \
      --drt-loss "$loss"
    rc=$?
    echo "RESULT $name: $([ $rc = 0 ] && echo PASS || echo FAIL)"
    exit $rc
  } 2>&1 | tee "$report"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || status=1
  summary+=("$name: $([ "$rc" = 0 ] && echo PASS || echo "FAIL (rc $rc)")")
done

echo
echo "== summary"
printf '  %s\n' "${summary[@]}"
[ "$status" = 0 ] && echo "PARITY: ALL PASS" || echo "PARITY: FAILURES"
exit $status
