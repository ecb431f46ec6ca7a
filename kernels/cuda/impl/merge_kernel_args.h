#ifndef RINGATTN_KERNELS_CUDA_IMPL_MERGE_KERNEL_ARGS_H_
#define RINGATTN_KERNELS_CUDA_IMPL_MERGE_KERNEL_ARGS_H_

#include <cstdint>

// The merge kernel's whole input (merge_kernels.cuh), apart so the C++
// compiler builds its callers.

namespace ringattn::kernels::cuda::impl {

struct MergeArgs {
  float* out = nullptr;          // [rows, D] running result, updated in place
  float* lse = nullptr;          // [rows] running log-sum-exp; -inf: nothing yet
  const float* o_s = nullptr;    // [rows, D] the chunk's partial output
  const float* lse_s = nullptr;  // [rows] the chunk's log-sum-exp; -inf: adds nothing
  int64_t rows = 0;
  int64_t head_dim = 0;
};

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_MERGE_KERNEL_ARGS_H_
