#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (and nvcc): builds every CUDA target, runs the gpu-labelled
# tests, then the GPU benchmarks (with PyTorch's flash attention as the attention baseline where
# python3 has torch). Everything goes to stdout;
# the exit status is the tests' (benchmarks run even when a test fails, so that one call to a
# scarce GPU machine gives the whole picture).
#
#   bash scripts/gpu-check.sh [build-dir]        # default build-gpu
#   GPU_CHECK_SKIP_BENCH=1 bash scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build_dir="${1:-build-gpu}"
jobs="$(nproc)"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "---- configure $build_dir"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DDRT_GPU_TESTS=ON \
  -DDRT_BUILD_TESTS=ON -DDRT_BUILD_BENCHMARKS=ON -DDRT_BUILD_EXAMPLES=ON >/dev/null || exit 1
targets=()
for f in tests/cuda/test_*.cu bench/*.cu; do targets+=("$(basename "${f%.cu}")"); done
targets+=(cuda_two_translation_units drt_gpu_tool drt_tool)
echo "---- build ${targets[*]} (-j $jobs)"
start=$SECONDS
cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}" || exit 1
echo "---- built in $((SECONDS - start)) s"

echo "---- ctest -L gpu"
ctest --test-dir "$build_dir" -L gpu --output-on-failure --timeout 600
status=$?

bench() {
  echo "---- $*"
  "$build_dir/bench/$1" "${@:2}" || true
}
if [[ -z "${GPU_CHECK_SKIP_BENCH:-}" ]]; then
  bench bench_cuda
  bench bench_cuda_attention                        # window attention and GCA at the DRT training shapes
  bench kernel_lab                                  # every version of both, with its error against the CPU op
  echo "---- python3 bench/sdpa_baseline.py (PyTorch flash attention on the same work)"
  python3 bench/sdpa_baseline.py || echo "(no PyTorch with CUDA here: no SDPA baseline)"
  bench bench_cuda_train --phases                   # config_63, fp32, 1 x 16,380 tokens
  # The paper-size run of issue 6: config_63 with bf16 GEMMs at 16,380 tokens x batch 4 (four
  # micro-batches of one sequence; see include/drt/cuda/README.md for why).
  bench bench_cuda_train --precision bf16 --batch 4 --micro-batch 1 --phases
  # Inference (issue 7): prefill tokens/s and decode ms/token after 64K and 1M tokens of context.
  bench bench_cuda_decode
fi
exit $status
