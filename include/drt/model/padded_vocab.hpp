// drt/model/padded_vocab.hpp — the LM head padded to a multiple of 64 rows on the GPU.
//
// Shapes: head (V, D) → storage (V', D) with V' = V rounded up to a multiple of 64; logits
// (..., V') are handed on as their (..., V) view, except to the loss, which scores them in place.
//
// Why: cuBLAS picks slow fallback kernels when a GEMM's N is not a multiple of its tiles (the
// reference loses 21% of its step on the 50,265-entry head). The padding is invisible outside the
// model: the head Parameter that checkpoints, optimisers and parameter counts see becomes a view
// of the storage's first V rows (value and gradient), the padding rows stay zero (their logit
// columns get a zero gradient, so no gradient reaches them), and the logits are sliced back to V
// before anyone sees them. The loss is the exception: cross_entropy takes the (..., V') logits
// with C = V classes (`classes`) and writes their whole gradient at once, zeros in the padding
// columns. Through the slice, the backward would also zero-fill a (rows, V') gradient and add the
// (rows, V) one into it with a strided kernel: extra passes over 3.3 GB at config_63's 16,640 rows.
// The CPU needs none of this, so a model pads only when moved to a GPU.
#pragma once

#include "drt/autodiff/view.hpp"
#include "drt/model/parameters.hpp"

namespace drt {

inline constexpr Index kVocabPadMultiple = 64;

template <class T>
class PaddedVocab {
 public:
  // Re-homes `head` into zero-padded storage on head's device (nothing to do when V is already a
  // multiple of 64).
  void pad(Parameter<T>& head) {
    const Index V = head.value().size(0), D = head.value().size(1);
    const Index padded_rows = (V + kVocabPadMultiple - 1) / kVocabPadMultiple * kVocabPadMultiple;
    if (padded_rows == V) return;
    const Tensor<T> value = Tensor<T>::zeros({padded_rows, D}, nullptr, head.device());
    const Tensor<T> grad = Tensor<T>::zeros({padded_rows, D}, nullptr, head.device());
    value.slice(0, 0, V).copy_from(head.value());
    grad.slice(0, 0, V).copy_from(head.grad());
    head.node()->value = value.slice(0, 0, V);
    head.node()->grad = grad.slice(0, 0, V);
    padded_ = std::make_unique<Parameter<T>>(Parameter<T>::sharing(value, grad));
    rows_ = V;
  }
  // Gives `head` its own unpadded storage again (before the model leaves the GPU).
  void unpad(Parameter<T>& head) {
    if (!padded_) return;
    head.node()->value = head.value().clone();
    head.node()->grad = head.grad().clone();
    padded_.reset();
  }
  bool active() const { return padded_ != nullptr; }
  // The (V', D) table to multiply with (and, for a tied head, to embed from); `head` when inactive.
  const Var<T>& table(const Parameter<T>& head) const { return padded_ ? *padded_ : head; }
  // Logits (..., V) from the table's (..., V') product.
  Var<T> visible(const Var<T>& logits) const { return padded_ ? slice(logits, -1, 0, rows_) : logits; }
  // How many of the table's product's (..., V') columns are real classes: V (all of them when inactive).
  Index classes(const Var<T>& logits) const { return padded_ ? rows_ : logits.size(-1); }

 private:
  std::unique_ptr<Parameter<T>> padded_;
  Index rows_ = 0;
};

// Moves every parameter and buffer of `model` to `device` (the Parameters keep their addresses),
// with `head`, one of them, padded on a GPU: what DrtModel::move_to and SlidingWindowLM::move_to do.
template <class Model, class T>
void move_model_to(const Model& model, Parameter<T>& head, PaddedVocab<T>& padding, Device device) {
  padding.unpad(head);
  for (const auto& p : model.named_parameters()) p.parameter->move_to(device);
  for (const auto& [name, buffer] : model.named_buffers()) *buffer = buffer->to(device);
  if (device != Device::cpu) padding.pad(head);
}

}  // namespace drt
