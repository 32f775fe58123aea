// drt/inference.hpp — decoding at any length: window caches, the chunk memory (RAM or disk),
// incremental DRT and baseline decoders (on the CPU or the GPU, where a DRT's step replays a
// recorded CUDA graph), and sampling.
#pragma once

#include "drt/inference/window_cache.hpp"      // defines: WindowKvCache, cached_attention, attend_cached
#include "drt/inference/chunk_store.hpp"       // defines: ChunkStore, MemoryChunkStore, MappedChunkStore
#include "drt/inference/decoder.hpp"           // defines: IncrementalDecoder (feed, step)
#include "drt/inference/step_recorder.hpp"     // defines: StepRecorder, make_step_recorder (CUDA graphs)
#include "drt/inference/drt_decoder.hpp"       // defines: DrtDecoder, ChunkRetrieval, select_chunks
#include "drt/inference/baseline_decoder.hpp"  // defines: BaselineDecoder
#include "drt/inference/sampling.hpp"          // defines: SamplingOptions, sample_token
