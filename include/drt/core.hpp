// drt/core.hpp — the core: tensors, lazy expressions, GEMM, random numbers and the tape.
#pragma once

#include "drt/core/error.hpp"     // defines: Error, DRT_CHECK
#include "drt/core/shape.hpp"     // defines: Shape, Strides, broadcast_shapes
#include "drt/core/memory.hpp"    // defines: Arena, heap_allocation_count
#include "drt/core/tensor.hpp"    // defines: Tensor<T>, IndexTensor
#include "drt/core/expr.hpp"      // defines: lazy + - * /, exp, log, ..., select, eval
#include "drt/core/reduce.hpp"    // defines: sum, mean, max along an axis; add_sum_to
#include "drt/core/precision.hpp" // defines: Precision, set_matmul_precision, MatmulPrecisionScope
#include "drt/core/matmul.hpp"    // defines: gemm, matmul
#include "drt/core/random.hpp"    // defines: Generator, fill_uniform, fill_normal, ...
#include "drt/core/indexing.hpp"  // defines: concat, index_select, gather, scatter_add (raw)

#include "drt/autodiff/tape.hpp"         // defines: Tape, tape(), NoGradGuard
#include "drt/autodiff/var.hpp"          // defines: Var<T>, Parameter<T>, backward
#include "drt/autodiff/elementwise.hpp"  // defines: differentiable + - * /, exp, ..., select
#include "drt/autodiff/reduce.hpp"       // defines: differentiable sum, mean, max
#include "drt/autodiff/matmul.hpp"       // defines: differentiable matmul, linear
#include "drt/autodiff/view.hpp"         // defines: differentiable reshape, permute, transpose, slice, (un)squeeze, broadcast_to, contiguous, concat
#include "drt/autodiff/indexing.hpp"     // defines: differentiable index_select, gather, scatter_add, embedding
#include "drt/autodiff/profile.hpp"      // defines: BackwardObserver, BackwardProfile (time per op in backward)
