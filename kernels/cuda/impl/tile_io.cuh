#ifndef RINGATTN_KERNELS_CUDA_IMPL_TILE_IO_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_TILE_IO_CUH_

// Tiles between global and shared memory, and elements between the storage
// dtypes and fp32. Each load fills a whole padded tile: rows past the end of
// the sequence and head-dim columns past D are zero, and padding token slots
// never attend, so the GEMMs and the softmax run on full tiles without bounds
// checks.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_params.h"
#include "kernels/mask.h"

namespace ringattn::kernels::cuda::impl {

__device__ __forceinline__ float ToF32(float x) { return x; }
__device__ __forceinline__ float ToF32(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToF32(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round to nearest even, as the CPU kernels do.
template <typename T>
__device__ __forceinline__ T FromF32(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// dst[r, c] = src[r * d + c] for r < rows, c < d, and 0 for the rest of
// [tile_rows, cols], so padded rows and head-dim columns add nothing to the
// GEMMs. src: [rows, d] in global memory; dst: [tile_rows, ld] in shared
// memory, cols <= ld. 16-byte loads when every row of src starts 16-byte
// aligned; element loads for head dims that break that.
template <typename T>
__device__ __forceinline__ void LoadTile(T* dst, int ld, const T* src, int rows, int d,
                                         int tile_rows, int cols) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vectorized = d % kVec == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  if (vectorized) {
    const int chunks = cols / kVec;
    for (int i = threadIdx.x; i < tile_rows * chunks; i += blockDim.x) {
      const int r = i / chunks;
      const int c = (i % chunks) * kVec;
      uint4 value = make_uint4(0, 0, 0, 0);
      if (r < rows && c < d) value = *reinterpret_cast<const uint4*>(src + int64_t{r} * d + c);
      *reinterpret_cast<uint4*>(dst + r * ld + c) = value;
    }
    return;
  }
  for (int i = threadIdx.x; i < tile_rows * cols; i += blockDim.x) {
    const int r = i / cols;
    const int c = i % cols;
    dst[r * ld + c] = (r < rows && c < d) ? src[int64_t{r} * d + c] : FromF32<T>(0.0f);
  }
}

// Mask inputs of tokens [first, first + count) of one row of `meta`
// ([B, L], so `first` already includes the batch row); dst: [tile] in shared
// memory, pos0 the global position of token `first`. The slots from count
// up to tile are padding, which the mask never lets attend.
__device__ __forceinline__ void LoadTokens(TokenInfo* dst, const DeviceMeta& meta, int64_t first,
                                           int64_t pos0, int count, int tile) {
  for (int i = threadIdx.x; i < tile; i += blockDim.x) {
    if (i < count) {
      dst[i] = TokenInfo{pos0 + i, meta.doc[first + i], meta.vision[first + i],
                         meta.padding[first + i] != 0};
    } else {
      dst[i] = TokenInfo{pos0 + i, 0, -1, true};
    }
  }
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_TILE_IO_CUH_
