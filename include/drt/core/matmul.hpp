// drt/core/matmul.hpp — matrix products on the CPU through Eigen's GEMM kernel.
//
// Shapes: A (M, K) · B (K, N) → C (M, N); batched: (..., M, K) · (..., K, N) → (..., M, N),
// where B may also be a single (K, N) matrix shared by every batch entry.
//
// Why not `C.noalias() = A * B` on Eigen::Map? Eigen's product allocates its packing buffers
// on every call (and its OpenMP path allocates again), which would break drt's promise that a
// training step in steady state allocates nothing. So we call the very same kernel Eigen uses
// (internal::general_matrix_matrix_product) with packing buffers we keep per thread, and we
// split the work between threads ourselves. Transposed views (stride 1 along either axis) are
// used in place: no copies.
//
// Device tensors (drt/core/device.hpp) go to the device backend's GEMM (cuBLAS) with the same
// semantics: the same layouts are accepted, and a batch becomes one strided-batched call.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "drt/core/memory.hpp"
#include "drt/core/parallel.hpp"
#include "drt/core/precision.hpp"
#include "drt/core/tensor.hpp"

namespace drt {
namespace detail {


// Eigen's blocking object with packing buffers that persist across calls (one per thread).
template <class T>
class GemmWorkspace : public Eigen::internal::level3_blocking<T, T> {
 public:
  ~GemmWorkspace() {
    aligned_free(buffer_a_);
    aligned_free(buffer_b_);
  }
  // Blocking for a column-major product of `rows` × `cols` with inner size `depth`.
  void prepare(Index rows, Index cols, Index depth) {
    Index kc = depth, mc = rows, nc = cols;
    Eigen::internal::computeProductBlockingSizes<T, T, 1, Index>(kc, mc, nc, Index(1));
    this->m_kc = kc;
    this->m_mc = mc;
    this->m_nc = nc;
    grow(buffer_a_, capacity_a_, static_cast<std::size_t>(kc * mc));
    grow(buffer_b_, capacity_b_, static_cast<std::size_t>(kc * nc));
    this->m_blockA = buffer_a_;
    this->m_blockB = buffer_b_;
  }

 private:
  static void grow(T*& buffer, std::size_t& capacity, std::size_t need) {
    if (need <= capacity) return;
    aligned_free(buffer);
    buffer = static_cast<T*>(aligned_allocate(need * sizeof(T)));
    capacity = need;
  }
  T* buffer_a_ = nullptr;
  T* buffer_b_ = nullptr;
  std::size_t capacity_a_ = 0, capacity_b_ = 0;
};

template <class T>
GemmWorkspace<T>& gemm_workspace() {
  static thread_local GemmWorkspace<T> workspace;
  return workspace;
}

// How a 2-D view is laid out for BLAS: row-major (stride 1 along columns) or column-major.
struct MatrixLayout {
  bool row_major;
  Index leading;  // the stride of the non-unit axis
};
// Row-major: unit stride along columns and rows that don't overlap. Column-major: the
// transpose. Anything else (stride-0 broadcasts, both strides > 1) must be copied first.
template <class T>
bool is_row_major(const Tensor<T>& m) {
  return m.strides()[1] == 1 && (m.shape()[0] <= 1 || m.strides()[0] >= std::max<Index>(m.shape()[1], 1));
}
template <class T>
bool is_col_major(const Tensor<T>& m) {
  return m.strides()[0] == 1 && (m.shape()[1] <= 1 || m.strides()[1] >= std::max<Index>(m.shape()[0], 1));
}
template <class T>
bool blas_compatible(const Tensor<T>& m) {
  return m.rank() == 2 && (m.numel() == 0 || is_row_major(m) || is_col_major(m));
}
template <class T>
MatrixLayout layout_of(const Tensor<T>& m) {
  if (is_row_major(m)) return {true, std::max<Index>({m.strides()[0], m.shape()[1], 1})};
  return {false, std::max<Index>({m.strides()[1], m.shape()[0], 1})};
}

// C (row-major, M×N, leading dimension ldc) += alpha · A · B on one thread.
template <class T, int LhsOrder, int RhsOrder>
void gemm_kernel(Index M, Index N, Index K, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc, T alpha) {
  using namespace Eigen;
  GemmWorkspace<T>& ws = gemm_workspace<T>();
  ws.prepare(N, M, K);  // Eigen solves a row-major product as its column-major transpose
  internal::general_matrix_matrix_product<Index, T, LhsOrder, false, T, RhsOrder, false, RowMajor, 1>::run(
      M, N, K, a, lda, b, ldb, c, 1, ldc, alpha, ws, nullptr);
}

template <class T>
void gemm_single(Index M, Index N, Index K, const T* a, MatrixLayout la, const T* b, MatrixLayout lb, T* c,
                 Index ldc, T alpha) {
  using Eigen::ColMajor;
  using Eigen::RowMajor;
  if (la.row_major && lb.row_major) gemm_kernel<T, RowMajor, RowMajor>(M, N, K, a, la.leading, b, lb.leading, c, ldc, alpha);
  else if (la.row_major) gemm_kernel<T, RowMajor, ColMajor>(M, N, K, a, la.leading, b, lb.leading, c, ldc, alpha);
  else if (lb.row_major) gemm_kernel<T, ColMajor, RowMajor>(M, N, K, a, la.leading, b, lb.leading, c, ldc, alpha);
  else gemm_kernel<T, ColMajor, ColMajor>(M, N, K, a, la.leading, b, lb.leading, c, ldc, alpha);
}

// The batch stride of a stack of matrices whose batch axes (all but the last two) step through
// memory uniformly, or -1 when they do not (then the stack must be copied first).
template <class T>
Index uniform_batch_stride(const Tensor<T>& t) {
  Index stride = -1, expected = -1;
  for (int d = t.rank() - 3; d >= 0; --d) {
    if (t.shape()[d] == 1) continue;
    if (stride < 0) stride = t.strides()[d];
    else if (t.strides()[d] != expected) return -1;
    expected = t.strides()[d] * t.shape()[d];
  }
  return stride < 0 ? 0 : stride;
}

// The first 2-D matrix of a stack (its layout is the layout of all of them).
template <class T>
Tensor<T> first_matrix(Tensor<T> t) {
  while (t.rank() > 2) t = t.select(0, 0);
  return t;
}

// C[i] = alpha·A[i]·B[i] + beta·C[i] for i < batch on the device backend. Each of A, B, C is
// the first matrix of its stack; the stacks step by the given batch strides.
template <class T>
void gemm_on_device(const Tensor<T>& A, Index stride_a, const Tensor<T>& B, Index stride_b, const Tensor<T>& C,
                    Index stride_c, Index batch, T alpha, T beta) {
  DRT_CHECK(dtype_of<T>() == DType::f32 || dtype_of<T>() == DType::f64, "gemm: device GEMM needs float or double");
  DRT_CHECK(A.device() == C.device() && B.device() == C.device(), "gemm: operands on different devices (A ",
            device_name(A.device()), ", B ", device_name(B.device()), ", C ", device_name(C.device()), ")");
  const MatrixLayout la = layout_of(A), lb = layout_of(B);
  GemmArgs g{};
  g.M = A.shape()[0], g.K = A.shape()[1], g.N = B.shape()[1], g.batch = batch;
  g.a = A.data(), g.a_row_major = la.row_major, g.lda = la.leading, g.batch_stride_a = stride_a;
  g.b = B.data(), g.b_row_major = lb.row_major, g.ldb = lb.leading, g.batch_stride_b = stride_b;
  g.c = C.data(), g.ldc = std::max<Index>(C.strides()[0], g.N), g.batch_stride_c = stride_c;
  g.alpha = alpha, g.beta = beta;
  g.precision = matmul_precision();
  device_backend(C.device()).gemm(dtype_of<T>(), g);
}

template <class T>
void gemm_host(const Tensor<T>& A, const Tensor<T>& B, const Tensor<T>& C, T alpha, T beta, int threads);

// A row-major copy of the 2-D float matrix m, every element rounded to precision p: what a
// tensor core multiplies (see drt/core/precision.hpp).
inline Tensor<float> rounded_operand(const Tensor<float>& m, Precision p) {
  Tensor<float> r = Tensor<float>::empty(m.shape());
  const Index rows = m.shape()[0], cols = m.shape()[1], s0 = m.strides()[0], s1 = m.strides()[1];
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) r.data()[i * cols + j] = round_to_precision(m.data()[i * s0 + j * s1], p);
  return r;
}

}  // namespace detail

// C = alpha · A·B + beta · C for 2-D views. A and B may be transposed views; C must have
// stride 1 along its columns. `threads` = 0 uses every OpenMP thread for large products.
template <class T>
void gemm(const Tensor<T>& A, const Tensor<T>& B, const Tensor<T>& C, T alpha = T(1), T beta = T(0), int threads = 0) {
  DRT_CHECK(A.rank() == 2 && B.rank() == 2 && C.rank() == 2, "gemm: expects 2-D operands, got A ",
            A.shape().str(), ", B ", B.shape().str(), ", C ", C.shape().str());
  const Index M = A.shape()[0], K = A.shape()[1], N = B.shape()[1];
  DRT_CHECK(B.shape()[0] == K, "gemm: inner dimensions differ: A ", A.shape().str(), " · B ", B.shape().str());
  DRT_CHECK(C.shape()[0] == M && C.shape()[1] == N, "gemm: output shape ", C.shape().str(), " should be (", M,
            ", ", N, ") for A ", A.shape().str(), " · B ", B.shape().str());
  DRT_CHECK(detail::blas_compatible(A) && detail::blas_compatible(B),
            "gemm: operands need stride 1 along one axis (A strides ", A.strides()[0], ",", A.strides()[1],
            "; B strides ", B.strides()[0], ",", B.strides()[1], "); call contiguous() first");
  DRT_CHECK(detail::is_row_major(C) || C.numel() == 0, "gemm: output of shape ", C.shape().str(),
            " must be a row-major view (stride 1 along columns)");
  if (M == 0 || N == 0) return;
  if (!C.on_host() || !A.on_host() || !B.on_host()) return detail::gemm_on_device(A, 0, B, 0, C, 0, 1, alpha, beta);
  if constexpr (std::is_same_v<T, float>) {
    if (matmul_precision() != Precision::fp32) {
      // Emulate tensor-core operands: round copies, then the same fp32 product.
      const Tensor<float> Ar = detail::rounded_operand(A, matmul_precision());
      const Tensor<float> Br = detail::rounded_operand(B, matmul_precision());
      return detail::gemm_host(Ar, Br, C, alpha, beta, threads);
    }
  }
  detail::gemm_host(A, B, C, alpha, beta, threads);
}

namespace detail {
// The host part of gemm() above, after its checks: C = alpha·A·B + beta·C.
template <class T>
void gemm_host(const Tensor<T>& A, const Tensor<T>& B, const Tensor<T>& C, T alpha, T beta, int threads) {
  const Index M = A.shape()[0], K = A.shape()[1], N = B.shape()[1];
  const Index ldc = std::max<Index>(C.strides()[0], N);
  T* c = C.data();
  if (beta == T(0)) {
    for (Index i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, T(0));
  } else if (beta != T(1)) {
    for (Index i = 0; i < M; ++i)
      for (Index j = 0; j < N; ++j) c[i * ldc + j] *= beta;
  }
  if (K == 0) return;
  const MatrixLayout la = layout_of(A), lb = layout_of(B);
  const T* a = A.data();
  const T* b = B.data();

  int nt = threads > 0 ? threads : available_threads();
  if (double(M) * double(N) * double(K) < 64.0 * 64.0 * 64.0) nt = 1;  // too small to share
  if (nt <= 1) {
    gemm_single(M, N, K, a, la, b, lb, c, ldc, alpha);
    return;
  }
  // Split the larger output dimension into one contiguous band per thread.
  const bool split_rows = M >= N;
  const Index extent = split_rows ? M : N;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), count = omp_get_num_threads();
#else
    const int t = 0, count = 1;
#endif
    // Bands are multiples of 8 rows/columns, which keeps Eigen's micro-kernel on full tiles.
    const Index band = ((extent + count - 1) / count + 7) / 8 * 8;
    const Index begin = std::min(extent, t * band), end = std::min(extent, begin + band);
    if (begin < end) {
      if (split_rows) {
        const T* a0 = la.row_major ? a + begin * la.leading : a + begin;
        detail::gemm_single(end - begin, N, K, a0, la, b, lb, c + begin * ldc, ldc, alpha);
      } else {
        const T* b0 = lb.row_major ? b + begin : b + begin * lb.leading;
        detail::gemm_single(M, end - begin, K, a, la, b0, lb, c + begin, ldc, alpha);
      }
    }
  }
}
}  // namespace detail

// Matrix product with batching: (..., M, K) · (..., K, N) or (..., M, K) · (K, N).
// Batch axes must match exactly (no broadcasting beyond a shared 2-D B). Operands that are
// not BLAS-compatible views are copied into `arena` (or the heap) first.
template <class T>
Tensor<T> matmul(const Tensor<T>& A, const Tensor<T>& B, Arena* arena = nullptr) {
  DRT_CHECK(A.rank() >= 2 && B.rank() >= 2, "matmul: operands must be at least 2-D, got ", A.shape().str(),
            " and ", B.shape().str());
  const Index M = A.size(-2), K = A.size(-1), N = B.size(-1);
  DRT_CHECK(B.size(-2) == K, "matmul: inner dimensions differ: ", A.shape().str(), " · ", B.shape().str());
  const bool shared_b = B.rank() == 2;
  DRT_CHECK(shared_b || A.rank() == B.rank(), "matmul: batch ranks differ: ", A.shape().str(), " · ", B.shape().str());
  Shape out_shape;
  Index batch = 1;
  for (int i = 0; i < A.rank() - 2; ++i) {
    DRT_CHECK(shared_b || A.shape()[i] == B.shape()[i], "matmul: batch dimensions differ: ", A.shape().str(),
              " · ", B.shape().str());
    out_shape.push_back(A.shape()[i]);
    batch *= A.shape()[i];
  }
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor<T> C = Tensor<T>::empty(out_shape, arena, A.device());

  // Each operand is a stack of 2-D matrices. A matrix needs stride 1 along one of its axes
  // (so transposed views work in place); otherwise the operand is copied first.
  auto usable = [&](const Tensor<T>& t) {
    Tensor<T> m = t;
    if (t.numel() == 0) return t;
    while (m.rank() > 2) m = m.select(0, 0);  // the first matrix shows the layout of all of them
    return detail::blas_compatible(m) ? t : t.contiguous(arena);
  };
  const Tensor<T> Av = usable(A), Bv = usable(B);
  if (!A.on_host() || !B.on_host()) {
    // One strided-batched call; a stack whose batch axes are not uniformly strided is copied.
    if (batch == 0 || M == 0 || N == 0) return C;
    const Tensor<T> Ab = detail::uniform_batch_stride(Av) >= 0 ? Av : Av.contiguous(arena);
    const Tensor<T> Bb = shared_b || detail::uniform_batch_stride(Bv) >= 0 ? Bv : Bv.contiguous(arena);
    if (K == 0) {
      C.fill(T(0));
      return C;
    }
    detail::gemm_on_device(detail::first_matrix(Ab), detail::uniform_batch_stride(Ab), detail::first_matrix(Bb),
                           shared_b ? 0 : detail::uniform_batch_stride(Bb), detail::first_matrix(C), M * N, batch,
                           T(1), T(0));
    return C;
  }
  // The 2-D view of batch entry i (batch axes are 0..rank-3, row-major order).
  auto entry = [](Tensor<T> t, Index i) {
    Index idx[kMaxRank] = {};
    for (int d = t.rank() - 3; d >= 0; --d) {
      idx[d] = i % t.shape()[d];
      i /= t.shape()[d];
    }
    const int batch_axes = t.rank() - 2;
    for (int d = 0; d < batch_axes; ++d) t = t.select(0, idx[d]);
    return t;
  };
  auto one = [&](Index i, int threads) {
    gemm(entry(Av, i), shared_b ? Bv : entry(Bv, i), entry(C, i), T(1), T(0), threads);
  };
  // Many small products: one whole product per thread. Few large ones: threads inside each.
  const int nt = available_threads();
  if (batch >= nt && nt > 1) {
    parallel_for(batch, batch * M * N * K / 64, [&](Index i) { one(i, 1); });
  } else {
    for (Index i = 0; i < batch; ++i) one(i, 0);
  }
  return C;
}

}  // namespace drt
