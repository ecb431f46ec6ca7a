#ifndef RINGATTN_KERNELS_CUDA_IMPL_MERGE_LAUNCH_H_
#define RINGATTN_KERNELS_CUDA_IMPL_MERGE_LAUNCH_H_

// Launchers of merge_kernels.cuh, defined in merge_launch.cu; host code the
// C++ compiler builds calls them.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/tile_config.h"
#include "kernels/dtype.h"

namespace ringattn::kernels::cuda::impl {

struct MergeArgs;

// Grids of the element-wise kernels of kThreads threads: the merge runs a
// warp per row; the conversion strides over at most kMaxConvertBlocks.
inline constexpr int64_t kMaxConvertBlocks = 4096;
constexpr int64_t MergeBlocks(int64_t rows) { return (rows + kThreads / 32 - 1) / (kThreads / 32); }
constexpr int64_t FromF32Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return blocks < kMaxConvertBlocks ? blocks : kMaxConvertBlocks;
}

CudaStatus RunMergePartial(const MergeArgs& args, cudaStream_t stream);

// src: [n] fp32 -> dst: [n] dtype, on `stream`.
CudaStatus RunFromF32(const float* src, void* dst, int64_t n, DType dtype, cudaStream_t stream);

// dst[r * dst_stride + c] += src[r * src_stride + c] (AddKernel), on
// `stream`, with the conversion's grid over rows * cols.
CudaStatus RunAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                  int64_t rows, int64_t cols, cudaStream_t stream);

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_MERGE_LAUNCH_H_
