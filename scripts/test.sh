#!/usr/bin/env bash
# README command 2: installs what is missing, builds everything (Release, in ./build) and runs
# every test with ctest. Exits non-zero on any failure.
#
#   bash scripts/test.sh               # Release build in ./build
#   bash scripts/test.sh --sanitize    # AddressSanitizer + UBSan build in ./build-asan
#   bash scripts/test.sh -R Matmul     # other arguments go to ctest (here: only tests matching Matmul)
#
# Re-running reuses the build directory and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sanitize=0
ctest_args=()
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    -h | --help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ctest_args+=("$arg") ;;
  esac
done
jobs="$(nproc)"
# ctest runs several test programs at once, each with its own OpenMP team: threads that spin
# while waiting would steal the cores the other programs need (measured: up to 15x slower).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

if (( sanitize )); then
  build_dir=build-asan
  # CUDA is off here: no GPU tests run under the sanitizers, and nvcc rejects -fsanitize.
  # -O1 -g1 (line tables only) compiles 2.4x faster than RelWithDebInfo's -O2 -g (test_train.cpp:
  # 109 s against 266 s on the 2-core CI machine) and is what the ASan docs recommend; reports
  # still name files and lines.
  options=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
           -DDRT_SANITIZE=address,undefined -DDRT_ENABLE_CUDA=OFF
           -DDRT_BUILD_TESTS=ON -DDRT_BUILD_BENCHMARKS=OFF -DDRT_BUILD_EXAMPLES=OFF)
  # Set before building too: gtest_discover_tests runs each test program right after linking it.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:strict_init_order=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
else
  build_dir=build
  options=(-DCMAKE_BUILD_TYPE=Release -DDRT_BUILD_TESTS=ON)
fi

bash scripts/install-deps.sh

# A fresh build directory gets Ninja when it is there; an existing one keeps its generator.
generator=()
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
echo "---- configure $build_dir"
cmake -S . -B "$build_dir" "${generator[@]}" "${options[@]}" >/dev/null
echo "---- build $build_dir (-j $jobs)"
cmake --build "$build_dir" -j "$jobs"
echo "---- ctest $build_dir"
# --timeout: a default per test, so that a hung test fails instead of stalling CI.
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 900 "${ctest_args[@]}"
