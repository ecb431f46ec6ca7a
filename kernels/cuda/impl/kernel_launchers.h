#ifndef RINGATTN_KERNELS_CUDA_IMPL_KERNEL_LAUNCHERS_H_
#define RINGATTN_KERNELS_CUDA_IMPL_KERNEL_LAUNCHERS_H_

// Launchers of the kernel templates, one explicit instantiation per (pass,
// dtype, head-dim bucket) translation unit (generated from
// instantiate.cu.in), and the dispatch that turns the runtime dtype and head
// dim into those template arguments. Only CUDA translation units include
// this header.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/impl/dispatch.h"
#include "kernels/cuda/tile_config.h"

namespace ringattn::kernels::cuda::impl {

// Enqueue the forward kernel (p.q_summaries / p.kv_summaries already built).
template <typename T, int kBucket>
CudaStatus LaunchForwardKernel(const AttentionParams& p, const KernelLaunch& launch,
                               cudaStream_t stream);

// Enqueue delta = rowsum(dO * O), then the dK/dV and the dQ kernels.
template <typename T, int kBucket>
CudaStatus LaunchBackwardKernels(const AttentionParams& p, const KernelLaunch& dkdv,
                                 const KernelLaunch& dq, cudaStream_t stream);

// Enqueue the tile summaries of `meta` ([batch, len]) for tiles of `tile`
// tokens into out: [batch, ceil(len / tile)] on the device.
CudaStatus LaunchSummaries(const DeviceMeta& meta, int64_t batch, int64_t len, int tile,
                           TileSummary* out, cudaStream_t stream);

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_KERNEL_LAUNCHERS_H_
