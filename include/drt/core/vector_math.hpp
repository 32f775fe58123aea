// drt/core/vector_math.hpp — vectorised math on contiguous runs of numbers.
//
// std::exp is a scalar call (about 5 ns each here); Eigen's array exp evaluates 8 floats per AVX2
// instruction sequence. The attention kernels spend much of their non-GEMM time in exp, so they
// call these instead of writing the loops themselves.
#pragma once

#include <Eigen/Core>

#include "drt/core/shape.hpp"

namespace drt {

// Below this, exp(x − shift) is flushed to exactly 0. Eigen's float exp clamps its input and returns
// about 3e-39 for −∞ instead of 0; masked scores must give exactly 0. With shift = the row's
// maximum (or log-sum-exp) the largest term is about 1, so terms below e^−80 cannot matter.
inline constexpr double kExpFlush = -80.0;

// x[i] ← exp(x[i] − shift) for i < n; returns Σ x[i] afterwards.
template <class T>
T exp_shifted_sum(T* x, Index n, T shift) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(x, n);
  a = (a - shift > T(kExpFlush)).select((a - shift).exp(), T(0));
  return a.sum();
}

// x[i] ← exp(x[i] − shift[row]) for an (rows, cols) row-major block with row stride `stride`.
template <class T>
void exp_shifted_rows(T* x, Index rows, Index cols, Index stride, const T* shift) {
  for (Index r = 0; r < rows; ++r) {
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(x + r * stride, cols);
    a = (a - shift[r] > T(kExpFlush)).select((a - shift[r]).exp(), T(0));
  }
}

}  // namespace drt
