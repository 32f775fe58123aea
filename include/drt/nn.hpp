// drt/nn.hpp — neural-network ops with hand-written gradients, on top of the core.
#pragma once

#include "drt/core.hpp"

#include "drt/nn/softmax.hpp"        // defines: softmax, log_softmax (Var and raw Tensor)
#include "drt/nn/cross_entropy.hpp"  // defines: cross_entropy
#include "drt/nn/rms_norm.hpp"       // defines: rms_norm
#include "drt/nn/swiglu.hpp"         // defines: swiglu, swiglu_mlp
#include "drt/nn/rope.hpp"           // defines: rope
#include "drt/nn/alibi.hpp"          // defines: alibi_slopes, add_alibi
#include "drt/nn/dropout.hpp"        // defines: dropout
#include "drt/nn/masked_fill.hpp"    // defines: masked_fill
#include "drt/nn/topk.hpp"           // defines: TopK, topk, topk_indices
#include "drt/nn/gumbel.hpp"         // defines: gumbel_noise, add_gumbel
