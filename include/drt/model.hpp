// drt/model.hpp — everything: the core, the ops, the optimiser and the DRT model.
#pragma once

#include "drt/core.hpp"   // defines: Tensor, expressions, GEMM, tape, Var, Parameter, views, indexing
#include "drt/nn.hpp"     // defines: softmax, cross_entropy, rms_norm, swiglu, rope, alibi, dropout, topk, gumbel
#include "drt/optim.hpp"  // defines: AdamW, CosineSchedule, clip_grad_norm

#include "drt/attention/gca.hpp"               // defines: gca (Grouped Cross-Attention)
#include "drt/attention/window_attention.hpp"  // defines: window_attention (sliding window + ALiBi)

#include "drt/model/config.hpp"      // defines: ModelConfig (the reference's JSON keys)
#include "drt/model/parameters.hpp"  // defines: NamedParameter, ParameterList
#include "drt/model/blocks.hpp"      // defines: DecoderAttention, EncoderAttention, SwiGluMlp, Block
#include "drt/model/landmarks.hpp"   // defines: insert_landmarks, shift_targets, drop_landmark_rows
#include "drt/model/retrieval.hpp"   // defines: retrieve, causal_chunk_mask
#include "drt/model/gca_layer.hpp"   // defines: ChunkMemory, GcaLayer, UpperDecoderLayer
#include "drt/model/drt.hpp"         // defines: DrtModel, ForwardOptions
#include "drt/model/baseline.hpp"    // defines: SlidingWindowLM (the BaseLM), baseline_ids, next_token_targets
#include "drt/model/checkpoint.hpp"  // defines: save_weights, load_weights (safetensors, reference names)
#include "drt/model/flops.hpp"       // defines: drt_training_flops_per_token, baseline_training_flops_per_token
#include "drt/model/padded_vocab.hpp"  // defines: PaddedVocab (the LM head padded to 64 rows on a GPU)

#include "drt/inference.hpp"        // defines: DrtDecoder, BaselineDecoder, chunk stores, sample_token
