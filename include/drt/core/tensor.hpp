// drt/core/tensor.hpp — Tensor<T>: a dense, strided, up-to-5-D array on the CPU.
//
// A Tensor is a *handle*: copying it shares the data (like a NumPy view). `clone()` copies.
// Its memory comes from the heap (shared ownership, zeroed) or from an Arena (no ownership:
// valid until that arena is reset; drt's autodiff uses this for one step's intermediates).
//
// Views never copy: reshape (of a contiguous tensor), permute/transpose, slice, select,
// unsqueeze/squeeze and broadcast_to (stride 0) only change shape, strides and the data pointer.
// `contiguous()` materialises a view into a fresh row-major buffer when it is not one already.
//
// Elementwise arithmetic on tensors lives in drt/core/expr.hpp (lazy expressions).
//
// A tensor also knows its Device (drt/core/device.hpp). The default is the CPU; a device tensor
// is made with `empty/zeros/full(shape, arena, Device::cuda)` or `to(Device::cuda)`, and its
// data is never touched by host code here: copies, fills and allocation go through the device
// backend, and element access (`t(i, j)`, `to_vector()`, `item()`) copies to the host first
// or refuses. Views work the same on every device: they only change shape, strides and pointer.
#pragma once

#include <cmath>
#include <cstring>
#include <iomanip>
#include <memory>
#include <numeric>
#include <ostream>
#include <sstream>
#include <type_traits>
#include <vector>

#include "drt/core/device.hpp"
#include "drt/core/error.hpp"
#include "drt/core/memory.hpp"
#include "drt/core/shape.hpp"

namespace drt {

template <class T>
class Tensor;

#if defined(__CUDACC__)
namespace cuda {
// Defined in drt/cuda/core/cast.cuh (included at the end of this header under nvcc).
template <class T, class U>
void cast(const Tensor<T>& src, const Tensor<U>& dst);
}  // namespace cuda
#endif

// Defined in drt/core/expr.hpp: writes (or adds) an expression into a tensor in one pass.
template <class T, class E>
void assign_expression(const Tensor<T>& dst, const E& expression);
template <class T, class E>
void add_assign_expression(const Tensor<T>& dst, const E& expression);

template <class T>
class Tensor {
  static_assert(std::is_arithmetic_v<T>, "Tensor<T> holds arithmetic values");

 public:
  using value_type = T;

  // An undefined tensor: no shape, no data. `defined()` is false.
  Tensor() = default;

  // A zero-filled heap tensor.
  explicit Tensor(const Shape& shape) : Tensor(zeros(shape)) {}

  // --- creation -------------------------------------------------------------------------
  // Uninitialised memory from `arena`, or zeroed heap memory when arena is null.
  // On a device the memory comes from the device backend's allocator (an arena there only
  // means "no need to zero it"); it is owned and freed with the last handle.
  static Tensor empty(const Shape& shape, Arena* arena = nullptr, Device device = Device::cpu) {
    DRT_CHECK(shape.valid(), "Tensor: invalid shape ", shape.str());
    Tensor t;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    t.defined_ = true;
    t.device_ = device;
    const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * sizeof(T);
    if (device != Device::cpu) {
      t.owner_ = device_backend(device).allocate(bytes, arena == nullptr);
      t.data_ = static_cast<T*>(t.owner_.get());
    } else if (arena) {
      t.data_ = arena->allocate_array<T>(static_cast<std::size_t>(shape.numel()));
    } else {
      t.owner_ = make_heap_buffer(bytes);
      t.data_ = static_cast<T*>(t.owner_.get());
    }
    return t;
  }
  static Tensor zeros(const Shape& shape, Arena* arena = nullptr, Device device = Device::cpu) {
    Tensor t = empty(shape, arena, device);
    if (device != Device::cpu) {
      if (arena) t.fill(T(0));
    } else if (arena) std::memset(static_cast<void*>(t.data_), 0, sizeof(T) * static_cast<std::size_t>(shape.numel()));
    return t;
  }
  static Tensor full(const Shape& shape, T value, Arena* arena = nullptr, Device device = Device::cpu) {
    Tensor t = empty(shape, arena, device);
    if (device != Device::cpu) t.fill(value);
    else std::fill(t.data_, t.data_ + shape.numel(), value);
    return t;
  }
  // Row-major values; their count must match the shape.
  static Tensor from(const Shape& shape, const std::vector<T>& values, Arena* arena = nullptr) {
    DRT_CHECK(static_cast<Index>(values.size()) == shape.numel(), "Tensor::from: ", values.size(),
              " values for shape ", shape.str(), " (", shape.numel(), " elements)");
    Tensor t = empty(shape, arena);
    std::copy(values.begin(), values.end(), t.data_);
    return t;
  }
  // 0, 1, ..., n-1 as a 1-D tensor.
  static Tensor arange(Index n, Arena* arena = nullptr) {
    Tensor t = empty(Shape{n}, arena);
    for (Index i = 0; i < n; ++i) t.data_[i] = static_cast<T>(i);
    return t;
  }
  // Wraps memory owned by someone else (no copy, no ownership), on the host or on `device`.
  static Tensor wrap(T* data, const Shape& shape, Device device = Device::cpu) {
    Tensor t;
    t.data_ = data;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    t.defined_ = true;
    t.device_ = device;
    return t;
  }

  // --- inspection -----------------------------------------------------------------------
  bool defined() const { return defined_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  Index size(int axis) const { return shape_.dim(axis); }
  Index numel() const { return shape_.numel(); }
  const Strides& strides() const { return strides_; }
  Index stride(int axis) const { return strides_[shape_.normalize_axis(axis)]; }
  T* data() const { return data_; }
  // Where the data lives. Host code may dereference data() only when this is Device::cpu.
  Device device() const { return device_; }
  bool on_host() const { return device_ == Device::cpu; }
  // True when the tensor owns (shares) heap memory rather than pointing into an arena.
  bool owns_memory() const { return owner_ != nullptr; }
  const std::shared_ptr<void>& owner() const { return owner_; }

  bool is_contiguous() const {
    Index expected = 1;
    for (int i = rank() - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != expected) return false;
      expected *= shape_[i];
    }
    return true;
  }

  // Checked element access: t(i, j, k). Meant for tests, examples and printing, not hot loops.
  template <class... I>
  T& operator()(I... idx) const {
    static_assert((std::is_integral_v<I> && ...), "indices must be integers");
    const Index ids[] = {static_cast<Index>(idx)...};
    require_host("element access t(i, ...)");
    DRT_CHECK(static_cast<int>(sizeof...(I)) == rank(), "Tensor: ", sizeof...(I),
              " indices for a tensor of shape ", shape_.str());
    Index off = 0;
    for (int d = 0; d < rank(); ++d) {
      DRT_CHECK(ids[d] >= 0 && ids[d] < shape_[d], "Tensor: index ", ids[d], " out of range for axis ",
                d, " of shape ", shape_.str());
      off += ids[d] * strides_[d];
    }
    return data_[off];
  }
  // The single value of a one-element tensor.
  T item() const {
    DRT_CHECK(numel() == 1, "Tensor::item: tensor of shape ", shape_.str(), " has ", numel(), " elements");
    if (!on_host()) return to(Device::cpu).data_[0];
    return data_[0];
  }

  // --- views (no copies) ----------------------------------------------------------------
  // New shape with the same number of elements. One extent may be -1 (inferred).
  // Needs a contiguous tensor; call contiguous() first otherwise.
  Tensor reshape(Shape new_shape) const {
    Index known = 1;
    int infer = -1;
    for (int i = 0; i < new_shape.rank(); ++i) {
      if (new_shape[i] == -1) {
        DRT_CHECK(infer < 0, "reshape: more than one -1 in the new shape");
        infer = i;
      } else {
        known *= new_shape[i];
      }
    }
    if (infer >= 0) {
      DRT_CHECK(known > 0 && numel() % known == 0, "reshape: cannot infer -1 reshaping ", shape_.str());
      new_shape[infer] = numel() / known;
    }
    DRT_CHECK(new_shape.numel() == numel(), "reshape: shape ", shape_.str(), " (", numel(),
              " elements) cannot become ", new_shape.str(), " (", new_shape.numel(), " elements)");
    DRT_CHECK(is_contiguous(), "reshape: tensor of shape ", shape_.str(),
              " is not contiguous; call contiguous() first");
    Tensor t = *this;
    t.shape_ = new_shape;
    t.strides_ = contiguous_strides(new_shape);
    return t;
  }

  // Reorders the axes: result axis i is input axis order[i]. (No heap use: views must be free.)
  Tensor permute(std::initializer_list<int> order) const { return permute(order.begin(), static_cast<int>(order.size())); }
  Tensor permute(const std::vector<int>& order) const { return permute(order.data(), static_cast<int>(order.size())); }
  Tensor permute(const int* order, int count) const {
    DRT_CHECK(count == rank(), "permute: ", count, " axes given for a tensor of shape ", shape_.str());
    Tensor t = *this;
    bool seen[kMaxRank] = {};
    Shape s;
    for (int i = 0; i < rank(); ++i) {
      const int a = shape_.normalize_axis(order[i]);
      DRT_CHECK(!seen[a], "permute: axis ", a, " repeated");
      seen[a] = true;
      s.push_back(shape_[a]);
      t.strides_[i] = strides_[a];
    }
    t.shape_ = s;
    return t;
  }
  Tensor transpose(int a, int b) const {
    int order[kMaxRank];
    for (int i = 0; i < rank(); ++i) order[i] = i;
    std::swap(order[shape_.normalize_axis(a)], order[shape_.normalize_axis(b)]);
    return permute(order, rank());
  }
  // Elements begin, begin+step, ... < end along `axis`.
  Tensor slice(int axis, Index begin, Index end, Index step = 1) const {
    const int a = shape_.normalize_axis(axis);
    DRT_CHECK(step > 0, "slice: step must be positive, got ", step);
    DRT_CHECK(0 <= begin && begin <= end && end <= shape_[a], "slice: range [", begin, ", ", end,
              ") is outside axis ", a, " of shape ", shape_.str());
    Tensor t = *this;
    t.data_ = data_ + begin * strides_[a];
    t.shape_[a] = (end - begin + step - 1) / step;
    t.strides_[a] = strides_[a] * step;
    return t;
  }
  // The sub-tensor at position i along `axis`; the axis disappears.
  Tensor select(int axis, Index i) const {
    const int a = shape_.normalize_axis(axis);
    DRT_CHECK(0 <= i && i < shape_[a], "select: index ", i, " out of range for axis ", a, " of shape ",
              shape_.str());
    Tensor t = slice(a, i, i + 1);
    return t.squeeze(a);
  }
  Tensor unsqueeze(int axis) const {
    const int a = axis < 0 ? axis + rank() + 1 : axis;
    DRT_CHECK(a >= 0 && a <= rank() && rank() < kMaxRank, "unsqueeze: axis ", axis,
              " is invalid for shape ", shape_.str());
    Tensor t = *this;
    Shape s;
    Strides st{};
    for (int i = 0, j = 0; i <= rank(); ++i) {
      if (i == a) {
        s.push_back(1);
        st[i] = (a < rank()) ? strides_[a] * shape_[a] : 1;
      } else {
        s.push_back(shape_[j]);
        st[i] = strides_[j];
        ++j;
      }
    }
    t.shape_ = s;
    t.strides_ = st;
    return t;
  }
  Tensor squeeze(int axis) const {
    const int a = shape_.normalize_axis(axis);
    DRT_CHECK(shape_[a] == 1, "squeeze: axis ", a, " of shape ", shape_.str(), " is not 1");
    Tensor t = *this;
    Shape s;
    Strides st{};
    for (int i = 0, j = 0; i < rank(); ++i) {
      if (i == a) continue;
      s.push_back(shape_[i]);
      st[j++] = strides_[i];
    }
    t.shape_ = s;
    t.strides_ = st;
    return t;
  }
  // Repeats size-1 axes (and prepends new ones) to reach `target`, with stride 0: no copy.
  Tensor broadcast_to(const Shape& target) const {
    DRT_CHECK(broadcastable_to(shape_, target), "broadcast_to: shape ", shape_.str(),
              " cannot be broadcast to ", target.str());
    Tensor t = *this;
    const int lead = target.rank() - rank();
    Strides st{};
    for (int i = 0; i < target.rank(); ++i) {
      const int src = i - lead;
      st[i] = (src < 0 || shape_[src] != target[i]) ? 0 : strides_[src];
    }
    t.shape_ = target;
    t.strides_ = st;
    return t;
  }

  // --- copies ---------------------------------------------------------------------------
  // This tensor on `device`: *this when it is there already, else a row-major copy there
  // (host memory from `arena` if given). Host↔device copies are explicit: only this, clone
  // and copy_from move data between devices.
  Tensor to(Device device, Arena* arena = nullptr) const {
    if (device == device_) return *this;
    Tensor t = empty(shape_, arena, device);
    t.copy_from(*this);
    return t;
  }
  // A row-major copy on the same device (from `arena` if given, else the heap), or *this when
  // already contiguous.
  Tensor contiguous(Arena* arena = nullptr) const {
    return is_contiguous() ? *this : clone(arena);
  }
  // Always a fresh row-major copy.
  Tensor clone(Arena* arena = nullptr) const {
    Tensor t = empty(shape_, arena, device_);
    t.copy_from(*this);
    return t;
  }
  // Elementwise copy from `src`, which must have this tensor's shape (or broadcast to it).
  // Either tensor may be on a device (then the device backend copies).
  void copy_from(const Tensor& src) const;
  void fill(T value) const;
  // A row-major copy converted to U, on this tensor's device (a kernel there; nvcc only).
  template <class U>
  Tensor<U> cast(Arena* arena = nullptr) const {
    if (!on_host()) {
      Tensor<U> out = Tensor<U>::empty(shape_, arena, device_);
      DRT_ON_DEVICE("cast", cuda::cast(*this, out));
      return out;
    }
    Tensor<U> out = Tensor<U>::empty(shape_, arena);
    Index i = 0;
    for_each_offset([&](Index off) { out.data()[i++] = static_cast<U>(data_[off]); });
    return out;
  }

  // Writes an expression (see drt/core/expr.hpp) into this tensor's memory in one pass.
  template <class E>
  const Tensor& assign(const E& e) const {
    assign_expression(*this, e);
    return *this;
  }
  template <class E>
  const Tensor& operator+=(const E& e) const {
    add_assign_expression(*this, e);
    return *this;
  }

  // Calls f(offset) for every element, in row-major order of the logical index (host only:
  // f is expected to read data()[offset]).
  template <class F>
  void for_each_offset(F&& f) const {
    require_host("for_each_offset");
    if (numel() == 0) return;
    Index idx[kMaxRank] = {};
    Index off = 0;
    const int r = rank();
    for (Index n = numel(); n > 0; --n) {
      f(off);
      for (int d = r - 1; d >= 0; --d) {  // odometer increment
        if (++idx[d] < shape_[d]) {
          off += strides_[d];
          break;
        }
        off -= (shape_[d] - 1) * strides_[d];
        idx[d] = 0;
      }
    }
  }
  // The values in row-major order (for tests and small tensors).
  std::vector<T> to_vector() const {
    if (!on_host()) return to(Device::cpu).to_vector();
    std::vector<T> v;
    v.reserve(static_cast<std::size_t>(numel()));
    for_each_offset([&](Index off) { v.push_back(data_[off]); });
    return v;
  }

  // Throws when this tensor's data is not host memory (before host code would read it).
  void require_host(const char* what) const {
    DRT_CHECK(on_host(), what, ": the tensor of shape ", shape_.str(), " lives on device '", device_name(device_),
              "'; copy it to the host with to(Device::cpu) first");
  }
  StridedRef ref() const { return StridedRef{static_cast<void*>(data_), device_, shape_, strides_}; }

 private:
  T* data_ = nullptr;
  Shape shape_;
  Strides strides_{};
  std::shared_ptr<void> owner_;
  bool defined_ = false;
  Device device_ = Device::cpu;
};

template <class T>
void Tensor<T>::copy_from(const Tensor& src) const {
  DRT_CHECK(broadcastable_to(src.shape(), shape_), "copy_from: source shape ", src.shape().str(),
            " does not match destination shape ", shape_.str());
  const Tensor s = src.broadcast_to(shape_);
  if (!on_host() || !s.on_host()) {
    if (numel() > 0) device_backend(on_host() ? s.device() : device_).copy(sizeof(T), ref(), s.ref());
    return;
  }
  if (is_contiguous() && s.is_contiguous()) {
    std::memmove(static_cast<void*>(data_), s.data(), sizeof(T) * static_cast<std::size_t>(numel()));
    return;
  }
  // Walk both tensors with their own strides in the same logical order (two odometers).
  Index idx[kMaxRank] = {};
  Index od = 0, os = 0;
  const int r = rank();
  for (Index n = numel(); n > 0; --n) {
    data_[od] = s.data()[os];
    for (int k = r - 1; k >= 0; --k) {
      if (++idx[k] < shape_[k]) {
        od += strides_[k];
        os += s.strides()[k];
        break;
      }
      od -= (shape_[k] - 1) * strides_[k];
      os -= (shape_[k] - 1) * s.strides()[k];
      idx[k] = 0;
    }
  }
}

template <class T>
void Tensor<T>::fill(T value) const {
  if (!on_host()) {
    if (numel() > 0) device_backend(device_).fill(sizeof(T), ref(), &value);
    return;
  }
  for_each_offset([&](Index off) { data_[off] = value; });
}

// Prints the type, the shape and the values (at most 6 per axis, with "..." in between).
template <class T>
std::ostream& operator<<(std::ostream& os, const Tensor<T>& t) {
  const char* type = std::is_same_v<T, float> ? "float32" : std::is_same_v<T, double> ? "float64"
                   : std::is_same_v<T, std::int32_t> ? "int32" : std::is_same_v<T, std::int64_t> ? "int64" : "?";
  if (t.defined() && !t.on_host()) return os << "(on " << device_name(t.device()) << ") " << t.to(Device::cpu);
  os << "Tensor<" << type << "> shape " << t.shape().str();
  if (!t.defined()) return os << " (undefined)";
  os << "\n";
  std::ostringstream body;
  body << std::setprecision(5);
  Index idx[kMaxRank] = {};
  auto print = [&](auto&& self, int depth, Index offset) -> void {
    if (depth == t.rank()) {
      body << t.data()[offset];
      return;
    }
    const Index n = t.shape()[depth];
    body << "[";
    for (Index i = 0; i < n; ++i) {
      if (n > 6 && i == 3) {
        body << "..., ";
        i = n - 3;
      }
      idx[depth] = i;
      self(self, depth + 1, offset + i * t.strides()[depth]);
      if (i + 1 < n) body << (depth + 1 == t.rank() ? ", " : ",\n" + std::string(depth + 1, ' '));
    }
    body << "]";
  };
  print(print, 0, 0);
  return os << body.str();
}

using IndexTensor = Tensor<std::int32_t>;

}  // namespace drt

#if defined(__CUDACC__)
#include "drt/cuda/core/cast.cuh"
#endif
