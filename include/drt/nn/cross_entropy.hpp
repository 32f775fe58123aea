// drt/nn/cross_entropy.hpp — the language-model loss: softmax cross-entropy against class indices.
//
// Shapes: logits (..., V), targets (...) → loss () (one element); `classes` C ≤ V (default V):
// only columns [0, C) are classes, the rest are ignored and get a zero gradient:
//   loss = mean over positions whose target != ignore_index of −log_softmax(logits[..., :C])[target].
// Why C: on a GPU the model's LM head is padded to V' columns (model/padded_vocab.hpp); the loss
// scores the padded logits in place (C = V) instead of recording a slice, whose backward would
// zero-fill a (rows, V') gradient and copy a (rows, V) one into it.
//
// Fused: the forward keeps one log Σ exp per position and never materialises the probabilities;
// the backward writes (softmax − onehot)·g/count straight into the logits' gradient. Positions
// with the ignored target (padding) contribute nothing; if every target is ignored the loss and
// the gradient are 0 rather than 0/0.
//
// On the device (logits on the GPU): the targets are checked on the host (a device IndexTensor is
// copied back for that), then copied over once; the kernels (drt/cuda/nn/cross_entropy.cuh) read
// the logits once per pass, keep lse and the per-position losses in T, sum the losses in double
// and leave the loss on the device. When no gradient has reached the logits yet (the usual case:
// they feed only the loss), the backward creates their gradient uninitialised and writes every
// element of it, instead of zero-filling it first and adding.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "drt/core/precision.hpp"
#include "drt/core/reduce.hpp"
#include "drt/nn/softmax.hpp"

#if defined(__CUDACC__)
#include "drt/cuda/nn/cross_entropy.cuh"
#endif

namespace drt {
namespace detail {

// The device path of cross_entropy, after the host has checked the targets and counted them.
template <class T>
Var<T> cross_entropy_on_device(const Var<T>& logits, const IndexTensor& host_targets, int ignore_index, Index count,
                               Index classes) {
  const Device device = logits.device();
  const IndexTensor targets = host_targets.to(device, step_arena());  // row-major, as the kernels read it
  const Index rows = targets.numel();
  Tensor<T> lse = Tensor<T>::empty(Shape{rows}, step_arena(), device);
  Tensor<T> row_loss = Tensor<T>::empty(Shape{rows}, step_arena(), device);
  Tensor<T> loss = Tensor<T>::empty(Shape{}, step_arena(), device);
  DRT_ON_DEVICE("cross_entropy", cuda::cross_entropy_forward(logits.value(), targets, ignore_index, count, classes,
                                                             lse, row_loss, loss));
  Var<T> out = make_output(loss, {&logits});
  if (out.requires_grad())
    record_backward(out, [logits, targets, ignore_index, count, classes, lse, out] {
      // A first gradient is written whole by the kernel (zeros included), so it needs no zero-fill:
      // Node::grad_buffer's, minus the fill; with bf16 GEMMs it comes with its bf16 copy, which the
      // LM head's backward reads (Node::grad_rounded). A later one is added to, and any copy dropped.
      Node<T>* node = logits.node();
      const bool fresh = !node->grad.defined();
      node->grad_rounded.reset();
      if (fresh) node->grad = Tensor<T>::empty(logits.shape(), step_arena(), logits.device());
      if constexpr (std::is_same_v<T, float>)
        if (fresh && matmul_precision() == Precision::bf16) {
          DRT_ON_DEVICE("cross_entropy",
                        node->grad_rounded = cuda::cross_entropy_backward_rounded(
                            logits.value(), targets, ignore_index, count, classes, lse, out.grad(), node->grad));
          return;
        }
      DRT_ON_DEVICE("cross_entropy", cuda::cross_entropy_backward(logits.value(), targets, ignore_index, count,
                                                                   classes, lse, out.grad(), node->grad, fresh));
    });
  return out;
}

}  // namespace detail

// `classes` < 0 means every column (C = V).
template <class T>
Var<T> cross_entropy(const Var<T>& logits, const IndexTensor& target_indices, int ignore_index = -100,
                     Index classes = -1) {
  // The checks below read the targets on the host: a device IndexTensor is copied back first.
  const IndexTensor targets = target_indices.on_host() ? target_indices : target_indices.to(Device::cpu);
  DRT_CHECK(logits.rank() >= 1, "cross_entropy: logits need a vocabulary axis, got shape ", logits.shape().str());
  const int vocab_axis = logits.rank() - 1;
  const Shape expected = detail::reduced_shape(logits.shape(), vocab_axis, false);
  DRT_CHECK(targets.shape() == expected, "cross_entropy: logits of shape ", logits.shape().str(),
            " need targets of shape ", expected.str(), ", got targets of shape ", targets.shape().str());
  const Index V = logits.size(-1);
  DRT_CHECK(classes <= V, "cross_entropy: ", classes, " classes asked of logits with ", V, " columns (shape ",
            logits.shape().str(), ")");
  const Index C = classes < 0 ? V : classes;
  const Index rows = targets.numel();

  // Check every target before any work, so a bad one fails loudly and nothing is recorded.
  Index count = 0;
  for (Index row = 0; row < rows; ++row) {
    const std::int32_t t = targets.data()[detail::element_offset(targets, row)];
    if (t == ignore_index) continue;
    DRT_CHECK(t >= 0 && t < C, "cross_entropy: target ", t, " (at position ", row, ") is outside [0, ", C,
              "); the number of classes is ", C, " (of ", V, " logit columns) and ignore_index is ", ignore_index);
    ++count;
  }
  if (!logits.value().on_host()) return detail::cross_entropy_on_device(logits, targets, ignore_index, count, C);

  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const Tensor<T>& x = logits.value();
  Tensor<T> lse = Tensor<T>::empty(Shape{rows}, step_arena());       // log Σ exp per position
  Tensor<T> row_loss = Tensor<T>::empty(Shape{rows}, step_arena());  // summed serially: deterministic
  const Index xs = x.strides()[vocab_axis];
  detail::parallel_for_lanes(rows, rows * C, [&](Index row) {
    const std::int32_t t = targets.data()[detail::element_offset(targets, row)];
    if (t == ignore_index) {
      row_loss.data()[row] = T(0);
      return;
    }
    const T* in = x.data() + detail::lane_offset(x, vocab_axis, row);
    const T l = detail::lane_logsumexp(in, C, xs);
    lse.data()[row] = l;
    // A −inf target logit has probability 0: the loss is +inf (not −inf − −inf = NaN).
    row_loss.data()[row] = in[t * xs] == minus_inf ? std::numeric_limits<T>::infinity() : l - in[t * xs];
  });
  double total = 0;
  for (Index row = 0; row < rows; ++row) total += row_loss.data()[row];
  const T loss = count ? static_cast<T>(total / static_cast<double>(count)) : T(0);

  Var<T> out = make_output(Tensor<T>::full(Shape{}, loss, step_arena()), {&logits});
  if (out.requires_grad())
    record_backward(out, [logits, targets, ignore_index, count, C, lse, vocab_axis, out] {
      const Tensor<T>& x = logits.value();
      // Zero when every target is ignored; columns ≥ C are never written, so they stay zero too.
      const Tensor<T>& dx = logits.node()->grad_buffer();
      if (count == 0) return;
      const T scale = out.grad().item() / static_cast<T>(count);
      const Index xs = x.strides()[vocab_axis], ds = dx.strides()[vocab_axis];
      detail::parallel_for_lanes(targets.numel(), targets.numel() * C, [&](Index row) {
        const std::int32_t t = targets.data()[detail::element_offset(targets, row)];
        if (t == ignore_index) return;
        const T* in = x.data() + detail::lane_offset(x, vocab_axis, row);
        T* d = dx.data() + detail::lane_offset(dx, vocab_axis, row);
        const T l = lse.data()[row];
        if (l != minus_inf)  // an all −inf row has no probability mass to push down
          for (Index k = 0; k < C; ++k) d[k * ds] += scale * std::exp(in[k * xs] - l);
        d[t * ds] -= scale;
      });
    });
  return out;
}

}  // namespace drt
