// drt/cuda/attention/fresh_gradients.cuh — which gradient buffers an attention backward sets
// rather than adds into.
//
// A node's first gradient arrives in a fresh buffer that is not yet initialised (Node::grad_slot,
// drt/autodiff/var.hpp). The kernels that own every row they write (GCA and window attention,
// versions 4 and 5) store into such a buffer once, instead of a zero-fill followed by a
// read-modify-write: on the GPU that is two of the three passes over the gradient's memory. The
// other versions add, so the host zero-fills a fresh buffer before them.
#pragma once

namespace drt::cuda::attention {

struct FreshGradients {
  bool dq = false, dk = false, dv = false;
};

// Zero-fills the fresh ones of dq, dk, dv (each may be null), for kernels that only add.
template <class Tensor>
void zero_fresh(const Tensor* dq, const Tensor* dk, const Tensor* dv, FreshGradients fresh) {
  using T = typename Tensor::value_type;
  if (dq && fresh.dq) dq->fill(T(0));
  if (dk && fresh.dk) dk->fill(T(0));
  if (dv && fresh.dv) dv->fill(T(0));
}

}  // namespace drt::cuda::attention
