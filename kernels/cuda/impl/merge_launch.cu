#include "kernels/cuda/impl/merge_kernels.cuh"
#include "kernels/cuda/impl/merge_launch.h"

namespace ringattn::kernels::cuda::impl {

CudaStatus RunMergePartial(const MergeArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return CudaStatus{};
  const int64_t blocks = MergeBlocks(args.rows);
  MergePartialKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
  RINGATTN_CUDA_TRY(cudaGetLastError());
  return CudaStatus{};
}

CudaStatus RunFromF32(const float* src, void* dst, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return CudaStatus{};
  FromF32Kernel<<<static_cast<unsigned>(FromF32Blocks(n)), kThreads, 0, stream>>>(src, dst, n,
                                                                                  dtype);
  RINGATTN_CUDA_TRY(cudaGetLastError());
  return CudaStatus{};
}

}  // namespace ringattn::kernels::cuda::impl
