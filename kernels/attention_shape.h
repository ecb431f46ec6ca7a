#ifndef RINGATTN_KERNELS_ATTENTION_SHAPE_H_
#define RINGATTN_KERNELS_ATTENTION_SHAPE_H_

#include <cstdint>

#include "kernels/dtype.h"

// The sizes of one chunk problem: a query shard of Lq tokens against a K/V
// chunk of Lk tokens. Filled once by validation (validate.h) and read by every
// backend, so the CPU and CUDA kernels agree on what a shape is.
//
// Glossary: B batch, H query heads, Hkv key/value heads, Lq query shard
// length, Lk key chunk length, D head dim.

namespace ringattn::kernels {

struct AttentionShape {
  DType dtype = DType::kF32;  // Element type of q, k, v (and out, dout in backward)
  int64_t batch = 0;          // B
  int64_t heads = 0;          // H
  int64_t kv_heads = 0;       // Hkv, divides H
  int64_t q_len = 0;          // Lq
  int64_t kv_len = 0;         // Lk
  int64_t head_dim = 0;       // D, 1..kMaxHeadDim

  bool operator==(const AttentionShape&) const = default;
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_ATTENTION_SHAPE_H_
