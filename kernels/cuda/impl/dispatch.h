#ifndef RINGATTN_KERNELS_CUDA_IMPL_DISPATCH_H_
#define RINGATTN_KERNELS_CUDA_IMPL_DISPATCH_H_

// The runtime entry into the kernel templates: the dtype and head-dim bucket
// of p.shape select the instantiation. Host code compiled by the C++
// compiler calls these; they are defined in dispatch.cu.

#include <cuda_runtime_api.h>

#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/tile_config.h"

namespace ringattn::kernels::cuda::impl {

// Summaries and forward kernel for p.shape (dtype and head-dim bucket chosen
// at run time). `tiles` are the forward tiles the plan chose.
CudaStatus RunForward(const AttentionParams& p, TileShape tiles, const KernelLaunch& launch,
                      cudaStream_t stream);

// Summaries, delta and both backward kernels.
CudaStatus RunBackward(const AttentionParams& p, TileShape tiles, const KernelLaunch& dkdv,
                       const KernelLaunch& dq, cudaStream_t stream);

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_DISPATCH_H_
