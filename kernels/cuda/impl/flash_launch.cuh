#ifndef RINGATTN_KERNELS_CUDA_IMPL_FLASH_LAUNCH_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_FLASH_LAUNCH_CUH_

// Definitions of the kernel launchers declared in kernel_launchers.h, for
// the instantiation translation units.

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/impl/backward_kernels.cuh"
#include "kernels/cuda/impl/device_utils.cuh"
#include "kernels/cuda/impl/forward_kernel.cuh"
#include "kernels/cuda/impl/kernel_launchers.h"
#include "kernels/cuda/impl/smem_regions.cuh"
#include "kernels/cuda/tile_config.h"

namespace ringattn::kernels::cuda::impl {

// kBytes: what the kernel carves (smem_regions.cuh). The plan sizes the
// launch with the same constexpr layout functions; a mismatch means they
// were built from different tables.
template <int64_t kBytes>
CudaStatus CheckSmem(int64_t planned) {
  if (planned != kBytes) {
    return CudaStatus{cudaErrorInvalidConfiguration,
                      __FILE__ ": shared memory of the plan differs from the kernel's layout"};
  }
  return CudaStatus{};
}

template <typename T, int kBucket>
CudaStatus LaunchForwardKernel(const AttentionParams& p, const KernelLaunch& launch,
                               cudaStream_t stream) {
  RINGATTN_CUDA_TRY_STATUS((CheckSmem<ForwardSmemRegions<T, kBucket>::kBytes>(launch.smem_bytes)));
  const auto kernel = ForwardKernel<T, kBucket>;
  const int smem = static_cast<int>(launch.smem_bytes);
  RINGATTN_CUDA_TRY(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const dim3 grid(static_cast<unsigned>(launch.grid_x), static_cast<unsigned>(launch.grid_y));
  kernel<<<grid, launch.threads, smem, stream>>>(p);
  RINGATTN_CUDA_TRY(cudaGetLastError());
  return CudaStatus{};
}

template <typename T, int kBucket>
CudaStatus LaunchBackwardKernels(const AttentionParams& p, const KernelLaunch& dkdv,
                                 const KernelLaunch& dq, cudaStream_t stream) {
  RINGATTN_CUDA_TRY_STATUS(
      (CheckSmem<BackwardSmemRegions<T, kBucket, /*kDkDv=*/true>::kBytes>(dkdv.smem_bytes)));
  RINGATTN_CUDA_TRY_STATUS(
      (CheckSmem<BackwardSmemRegions<T, kBucket, /*kDkDv=*/false>::kBytes>(dq.smem_bytes)));

  const int64_t rows = p.shape.batch * p.shape.heads * p.shape.q_len;
  const auto delta_kernel = DeltaKernel<T>;
  delta_kernel<<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kThreads, 0, stream>>>(p);
  RINGATTN_CUDA_TRY(cudaGetLastError());

  const auto dkdv_kernel = BackwardDkDvKernel<T, kBucket>;
  const int dkdv_smem = static_cast<int>(dkdv.smem_bytes);
  RINGATTN_CUDA_TRY(
      cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dkdv_smem));
  dkdv_kernel<<<dim3(static_cast<unsigned>(dkdv.grid_x), static_cast<unsigned>(dkdv.grid_y)),
                dkdv.threads, dkdv_smem, stream>>>(p);
  RINGATTN_CUDA_TRY(cudaGetLastError());

  const auto dq_kernel = BackwardDqKernel<T, kBucket>;
  const int dq_smem = static_cast<int>(dq.smem_bytes);
  RINGATTN_CUDA_TRY(
      cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dq_smem));
  dq_kernel<<<dim3(static_cast<unsigned>(dq.grid_x), static_cast<unsigned>(dq.grid_y)), dq.threads,
              dq_smem, stream>>>(p);
  RINGATTN_CUDA_TRY(cudaGetLastError());
  return CudaStatus{};
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_FLASH_LAUNCH_CUH_
