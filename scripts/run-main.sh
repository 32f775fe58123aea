#!/usr/bin/env bash
# README command 1: installs what is missing, builds the drt tool (Release, in ./build, that target
# only) and runs the main job, `drt lengthgen`, on its built-in default: a small DRT and a
# same-size sliding-window baseline trained on the passkey task at a short length, then tested at
# 1x, 4x, 16x and 64x that length (table, PNG plots and checkpoints in runs/lengthgen/). Extra
# arguments go to `drt lengthgen`:
#
#   bash scripts/run-main.sh
#   bash scripts/run-main.sh --help
#   bash scripts/run-main.sh --steps 100 --trials 8     # a quick look
#
# Re-running reuses ./build and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly BUILD_DIR=build
readonly TARGET=drt_tool
readonly PROGRAM="$BUILD_DIR/tools/drt"
jobs="$(nproc)"

bash scripts/install-deps.sh

# A fresh build directory gets Ninja when it is there; an existing one keeps its generator.
generator=()
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" --target "$TARGET" -j "$jobs"

# Spinning OpenMP threads slow everything down when the machine is shared (docs/training.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
echo "---- $PROGRAM lengthgen $*"
exec "$PROGRAM" lengthgen "$@"
