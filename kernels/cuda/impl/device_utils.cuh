#ifndef RINGATTN_KERNELS_CUDA_IMPL_DEVICE_UTILS_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_DEVICE_UTILS_CUH_

// The few device primitives that the tile GEMM, the tile I/O, the online
// softmax and the kernels all need: the warps of a block, warp reductions,
// -inf, tile extents. They sit apart so those headers need not include each
// other for a constant.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/tile_config.h"

namespace ringattn::kernels::cuda::impl {

// Work is split across the warps of a block (GEMM fragments, softmax rows),
// so this is the stride of every warp loop.
constexpr int kWarps = kThreads / 32;

// From its bit pattern: std::numeric_limits is host-only without
// --expt-relaxed-constexpr.
__device__ __forceinline__ float NegInf() { return __int_as_float(0xff800000u); }

// Butterfly reductions: every lane gets the result, so no broadcast follows.
__device__ __forceinline__ float WarpMax(float x) {
  for (int offset = 16; offset > 0; offset /= 2) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

__device__ __forceinline__ float WarpSum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The rows of a tile that exist: min(tile, what is left of the sequence).
// What is left is int64 and can be large; the minimum is a tile extent and
// fits an int.
__device__ __forceinline__ int MinInt(int64_t a, int64_t b) {
  return static_cast<int>(a < b ? a : b);
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_DEVICE_UTILS_CUH_
