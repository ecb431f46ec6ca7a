#ifndef RINGATTN_KERNELS_CHUNK_PARAMS_H_
#define RINGATTN_KERNELS_CHUNK_PARAMS_H_

#include <cstdint>

#include "kernels/attention_shape.h"
#include "kernels/mask.h"

// The whole input of a chunk kernel, as plain pointers and sizes, filled by
// validation (validate.h) from the arguments of chunk_args.h. Every backend
// starts from these; the pointers are wherever the arguments' memory is.
// Tensors are dense row-major; see chunk_args.h for shapes.

namespace ringattn::kernels {

struct MetaPtrs {
  const int32_t* doc = nullptr;      // [B, L]
  const int32_t* vision = nullptr;   // [B, L]
  const uint8_t* padding = nullptr;  // [B, L]
  int64_t start = 0;                 // Global position of element 0.
};

struct ChunkProblem {
  AttentionShape shape;
  const void* q = nullptr;  // [B, H, Lq, D]
  const void* k = nullptr;  // [B, Hkv, Lk, D]
  const void* v = nullptr;  // [B, Hkv, Lk, D]
  MetaPtrs q_meta;          // [B, Lq]
  MetaPtrs kv_meta;         // [B, Lk]
  MaskRule mask;
  float scale = 1.0f;
};

struct ForwardParams {
  ChunkProblem problem;
  float* out = nullptr;  // [B, H, Lq, D]
  float* lse = nullptr;  // [B, H, Lq]
};

struct BackwardParams {
  ChunkProblem problem;
  const void* out = nullptr;   // [B, H, Lq, D] dtype
  const void* dout = nullptr;  // [B, H, Lq, D] dtype
  const float* lse = nullptr;  // [B, H, Lq]
  float* dq = nullptr;         // [B, H, Lq, D] accumulated
  float* dk = nullptr;         // [B, Hkv, Lk, D] accumulated
  float* dv = nullptr;         // [B, Hkv, Lk, D] accumulated
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_CHUNK_PARAMS_H_
