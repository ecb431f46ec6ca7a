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

CudaStatus RunAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                  int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return CudaStatus{};
  AddKernel<<<static_cast<unsigned>(FromF32Blocks(rows * cols)), kThreads, 0, stream>>>(
      dst, dst_stride, src, src_stride, rows, cols);
  RINGATTN_CUDA_TRY(cudaGetLastError());
  return CudaStatus{};
}

}  // namespace ringattn::kernels::cuda::impl
