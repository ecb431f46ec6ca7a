#include <cuda_runtime.h>

#include "kernels/block_classification.h"
#include "kernels/cuda/impl/kernel_launchers.h"

namespace ringattn::kernels::cuda::impl {
namespace {

__global__ void SummariesKernel(const DeviceMeta meta, int64_t batch, int64_t len, int tile,
                                int64_t tiles, TileSummary* out) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= batch * tiles) return;
  const int64_t b = i / tiles;
  const int64_t t = i % tiles;
  const int64_t first = b * len + t * tile;
  const int64_t rest = len - t * tile;
  const int32_t count = static_cast<int32_t>(rest < tile ? rest : tile);
  out[i] = Summarize(meta.doc + first, meta.vision + first, meta.padding + first,
                     meta.start + t * tile, count);
}

// Runtime dtype and head dim -> template arguments.
template <typename Fn>
CudaStatus Dispatch(DType dtype, int bucket, Fn&& fn) {
  auto by_bucket = [&](auto type_tag) -> CudaStatus {
    using T = decltype(type_tag);
    switch (bucket) {
      case 64:
        return fn.template operator()<T, 64>();
      case 128:
        return fn.template operator()<T, 128>();
      case 256:
        return fn.template operator()<T, 256>();
      case 512:
        return fn.template operator()<T, 512>();
      default:
        return CudaStatus{cudaErrorInvalidValue, __FILE__ ": unsupported head-dim bucket"};
    }
  };
  switch (dtype) {
    case DType::kF32:
      return by_bucket(float{});
    case DType::kBF16:
      return by_bucket(__nv_bfloat16{});
    case DType::kF16:
      return by_bucket(__half{});
  }
  return CudaStatus{cudaErrorInvalidValue, __FILE__ ": unsupported dtype"};
}

}  // namespace

CudaStatus LaunchSummaries(const DeviceMeta& meta, int64_t batch, int64_t len, int tile,
                           TileSummary* out, cudaStream_t stream) {
  const int64_t tiles = (len + tile - 1) / tile;
  const int64_t n = batch * tiles;
  constexpr int kBlock = 128;
  SummariesKernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, stream>>>(
      meta, batch, len, tile, tiles, out);
  RINGATTN_CUDA_TRY(cudaGetLastError());
  return CudaStatus{};
}

CudaStatus RunForward(const AttentionParams& p, TileShape tiles, const KernelLaunch& launch,
                      cudaStream_t stream) {
  const AttentionShape& sh = p.shape;
  RINGATTN_CUDA_TRY_STATUS(
      LaunchSummaries(p.q_meta, sh.batch, sh.q_len, tiles.bq, p.q_summaries, stream));
  RINGATTN_CUDA_TRY_STATUS(
      LaunchSummaries(p.kv_meta, sh.batch, sh.kv_len, tiles.bk, p.kv_summaries, stream));
  return Dispatch(sh.dtype, HeadDimBucket(sh.head_dim), [&]<typename T, int kBucket>() {
    return LaunchForwardKernel<T, kBucket>(p, launch, stream);
  });
}

CudaStatus RunBackward(const AttentionParams& p, TileShape tiles, const KernelLaunch& dkdv,
                       const KernelLaunch& dq, cudaStream_t stream) {
  const AttentionShape& sh = p.shape;
  RINGATTN_CUDA_TRY_STATUS(
      LaunchSummaries(p.q_meta, sh.batch, sh.q_len, tiles.bq, p.q_summaries, stream));
  RINGATTN_CUDA_TRY_STATUS(
      LaunchSummaries(p.kv_meta, sh.batch, sh.kv_len, tiles.bk, p.kv_summaries, stream));
  return Dispatch(sh.dtype, HeadDimBucket(sh.head_dim), [&]<typename T, int kBucket>() {
    return LaunchBackwardKernels<T, kBucket>(p, dkdv, dq, stream);
  });
}

}  // namespace ringattn::kernels::cuda::impl
