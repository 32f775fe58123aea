// drt/core/shape.hpp — Shape (up to 5 dimensions), strides and broadcasting rules.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "drt/core/error.hpp"

namespace drt {

using Index = std::int64_t;
inline constexpr int kMaxRank = 5;

// The extent of each dimension, outermost first. Rank 0 is a scalar with one element.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<Index> dims) {
    DRT_CHECK(dims.size() <= kMaxRank, "Shape: rank ", dims.size(), " exceeds the maximum of ", kMaxRank);
    for (Index d : dims) push_back(d);
  }
  template <class It>
  static Shape from(It first, It last) {
    Shape s;
    for (; first != last; ++first) s.push_back(static_cast<Index>(*first));
    return s;
  }

  int rank() const { return rank_; }
  Index operator[](int i) const { return dims_[i]; }
  Index& operator[](int i) { return dims_[i]; }
  // Negative axes count from the end, as in NumPy.
  Index dim(int axis) const { return dims_[normalize_axis(axis)]; }
  int normalize_axis(int axis) const {
    int a = axis < 0 ? axis + rank_ : axis;
    DRT_CHECK(a >= 0 && a < rank_, "axis ", axis, " is out of range for shape ", str());
    return a;
  }

  bool valid() const {
    for (int i = 0; i < rank_; ++i)
      if (dims_[i] < 0) return false;
    return true;
  }
  Index numel() const {
    Index n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[i];
    return n;
  }
  void push_back(Index d) {
    DRT_CHECK(rank_ < kMaxRank, "Shape: more than ", kMaxRank, " dimensions");
    DRT_CHECK(d >= -1, "Shape: negative extent ", d);  // -1 only means "infer" in reshape
    dims_[rank_++] = d;
  }
  const Index* begin() const { return dims_.data(); }
  const Index* end() const { return dims_.data() + rank_; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

  // "(2, 3, 4)"; a scalar prints as "()".
  std::string str() const {
    std::string s = "(";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
    return s + ")";
  }

 private:
  std::array<Index, kMaxRank> dims_{};
  int rank_ = 0;
};

// Element steps between neighbours along each dimension. A stride of 0 repeats one element
// (broadcasting); strides are in elements, not bytes.
using Strides = std::array<Index, kMaxRank>;

inline Strides contiguous_strides(const Shape& shape) {
  Strides s{};
  Index step = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    s[i] = step;
    step *= shape[i];
  }
  return s;
}

// NumPy broadcasting: align the shapes on the right; each pair of extents must be equal or one of
// them 1. `op` names the operation for the error message.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op = "broadcast") {
  const int rank = std::max(a.rank(), b.rank());
  Shape out;
  for (int i = 0; i < rank; ++i) {
    const int ia = i - (rank - a.rank()), ib = i - (rank - b.rank());
    const Index da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    DRT_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", a.str(), " and ", b.str(),
              " cannot be broadcast together");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

// True when `from` can be broadcast to `to` without changing `to`.
inline bool broadcastable_to(const Shape& from, const Shape& to) {
  if (from.rank() > to.rank()) return false;
  for (int i = 0; i < from.rank(); ++i) {
    const Index f = from[i], t = to[i + to.rank() - from.rank()];
    if (f != t && f != 1) return false;
  }
  return true;
}

}  // namespace drt
