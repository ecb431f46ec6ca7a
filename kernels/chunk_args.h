#ifndef RINGATTN_KERNELS_CHUNK_ARGS_H_
#define RINGATTN_KERNELS_CHUNK_ARGS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/dtype.h"
#include "kernels/layer_config.h"

// Arguments of the chunk kernels: one query shard against one K/V chunk, the
// granularity of one ring step (SPEC §3-4). Every field is checked once at
// this boundary; the kernels behind it trust what they are given.
//
// Glossary: B batch, H query heads, Hkv key/value heads, Lq query shard
// length, Lk key chunk length, D head dim.

namespace ringattn::kernels {

// A read-only dense row-major tensor of rank 4.
struct TensorRef {
  DType dtype = DType::kF32;
  std::array<int64_t, 4> shape{};
  const void* data = nullptr;
  size_t size_bytes = 0;  // Must equal product(shape) * DTypeSize(dtype).
};

// Per-token metadata of a contiguous slice of the padded sequence.
struct TokenMetaRef {
  std::span<const int32_t> doc;      // [B, L] document ids; <= 0: padding.
  std::span<const int32_t> vision;   // [B, L] vision group ids; -1: none.
  std::span<const uint8_t> padding;  // [B, L] 1 = padding token.
  int64_t start = 0;                 // Global position of element 0.
};

struct ForwardChunkArgs {
  TensorRef q;           // [B, H, Lq, D]
  TensorRef k;           // [B, Hkv, Lk, D]
  TensorRef v;           // [B, Hkv, Lk, D]
  TokenMetaRef q_meta;   // [B, Lq]
  TokenMetaRef kv_meta;  // [B, Lk]
  LayerConfig layer;
  // Outputs, overwritten. Partial output normalized over this chunk's keys
  // only; merge partials with MergePartial.
  std::span<float> out;  // [B, H, Lq, D] fp32
  std::span<float> lse;  // [B, H, Lq] fp32; -inf: no key of this chunk attends.
};

struct BackwardChunkArgs {
  TensorRef q;                 // [B, H, Lq, D]
  TensorRef k;                 // [B, Hkv, Lk, D]
  TensorRef v;                 // [B, Hkv, Lk, D]
  TensorRef out;               // [B, H, Lq, D] final forward output (all chunks merged)
  TensorRef dout;              // [B, H, Lq, D] gradient of the loss w.r.t. out
  std::span<const float> lse;  // [B, H, Lq] final merged log-sum-exp
  TokenMetaRef q_meta;         // [B, Lq]
  TokenMetaRef kv_meta;        // [B, Lk]
  LayerConfig layer;
  // Outputs, accumulated (+=) in fp32 so a ring can sum chunk after chunk.
  std::span<float> dq;  // [B, H, Lq, D]
  std::span<float> dk;  // [B, Hkv, Lk, D]
  std::span<float> dv;  // [B, Hkv, Lk, D]
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_CHUNK_ARGS_H_
