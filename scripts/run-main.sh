#!/usr/bin/env bash
# README command 1: installs what is missing, builds drt's main program (Release, in ./build,
# that target only) and runs it on its built-in default. Extra arguments go to the program:
#
#   bash scripts/run-main.sh
#   bash scripts/run-main.sh --help
#
# Re-running reuses ./build and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly BUILD_DIR=build
readonly TARGET=drt_demo
readonly PROGRAM="$BUILD_DIR/examples/$TARGET"
jobs="$(nproc)"

bash scripts/install-deps.sh

# A fresh build directory gets Ninja when it is there; an existing one keeps its generator.
generator=()
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" --target "$TARGET" -j "$jobs"

echo "---- $PROGRAM $*"
exec "$PROGRAM" "$@"
