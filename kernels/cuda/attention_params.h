#ifndef RINGATTN_KERNELS_CUDA_ATTENTION_PARAMS_H_
#define RINGATTN_KERNELS_CUDA_ATTENTION_PARAMS_H_

#include <cstdint>

#include "kernels/attention_shape.h"
#include "kernels/block_classification.h"
#include "kernels/chunk_params.h"
#include "kernels/mask.h"

// The whole input of the CUDA chunk kernels: device pointers, sizes, the
// mask rule and the scale, filled once by the launcher after validation.
// Plain C++ (no CUDA headers), so host code and tests can build it. The
// shape is the one every backend shares (attention_shape.h).
//
// Glossary: B batch, H query heads, Hkv key/value heads, Lq query shard
// length, Lk key chunk length, D head dim. Tensors are dense row-major.

namespace ringattn::kernels::cuda {

// Per-token metadata of a contiguous slice of the padded sequence, in device
// memory: the validated host form (chunk_params.h) with its pointers moved.
using DeviceMeta = MetaPtrs;

// What every kernel of kernels/cuda sees. Forward-only and backward-only
// fields are marked; the others are common.
struct AttentionParams {
  AttentionShape shape;
  int64_t group = 1;                    // H / Hkv: query heads per kv head
  const void* q = nullptr;              // [B, H, Lq, D] dtype
  const void* k = nullptr;              // [B, Hkv, Lk, D] dtype
  const void* v = nullptr;              // [B, Hkv, Lk, D] dtype
  DeviceMeta q_meta;                    // [B, Lq]
  DeviceMeta kv_meta;                   // [B, Lk]
  MaskRule mask;                        // Position part of the SPEC §2 mask
  float scale = 1.0f;                   // Multiplies q·k
  int64_t q_tiles = 0;                  // ceil(Lq / the kernel's query tile)
  int64_t kv_tiles = 0;                 // ceil(Lk / the kernel's key tile)
  TileSummary* q_summaries = nullptr;   // [B, q_tiles] workspace, built by the launcher
  TileSummary* kv_summaries = nullptr;  // [B, kv_tiles] workspace, built by the launcher
  float* out = nullptr;                 // forward: [B, H, Lq, D] fp32 chunk partial, overwritten
  float* lse = nullptr;              // forward: [B, H, Lq] fp32, overwritten; -inf: nothing attends
  const void* fwd_out = nullptr;     // backward: [B, H, Lq, D] dtype, final forward output
  const void* dout = nullptr;        // backward: [B, H, Lq, D] dtype
  const float* final_lse = nullptr;  // backward: [B, H, Lq] final merged log-sum-exp
  float* delta = nullptr;            // backward: [B, H, Lq] workspace, rowsum(dO * O)
  float* dq = nullptr;               // backward: [B, H, Lq, D] fp32, accumulated
  float* dk = nullptr;               // backward: [B, Hkv, Lk, D] fp32, accumulated
  float* dv = nullptr;               // backward: [B, Hkv, Lk, D] fp32, accumulated
};

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_ATTENTION_PARAMS_H_
