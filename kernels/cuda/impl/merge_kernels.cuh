#ifndef RINGATTN_KERNELS_CUDA_IMPL_MERGE_KERNELS_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_MERGE_KERNELS_CUH_

// The element-wise steps a device-resident ring runs between chunk kernels:
// merging a chunk's partial O/LSE into the running result (SPEC §3) and
// writing the final output in the input dtype. They take the steps of the
// host functions (kernels/merge.h, kernels/convert.h) in the same order with
// the same roundings: the conversion is bit-exact, and the merge differs
// only by the device's expf/log1pf (within 2 ulp of the host's).

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/convert.h"
#include "kernels/cuda/impl/device_utils.cuh"
#include "kernels/cuda/impl/merge_kernel_args.h"
#include "kernels/cuda/tile_config.h"
#include "kernels/dtype.h"

namespace ringattn::kernels::cuda::impl {

// One warp per row (grid: ceil(rows / kWarps) blocks of kThreads), lanes
// across D. The -inf rules of MergePartial: a chunk with lse_s = -inf
// leaves the row untouched, a running lse of -inf takes the chunk's partial
// as it is, so an empty row stays exactly 0 / -inf and never turns NaN.
__global__ void __launch_bounds__(kThreads) MergePartialKernel(MergeArgs a) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= a.rows) return;  // The whole warp leaves together.
  const float x = a.lse[row];
  const float y = a.lse_s[row];
  if (y == NegInf()) return;
  float* acc = a.out + row * a.head_dim;
  const float* part = a.o_s + row * a.head_dim;
  float merged = y;
  if (x == NegInf()) {
    for (int64_t c = lane; c < a.head_dim; c += 32) acc[c] = part[c];
  } else {
    merged = fmaxf(x, y) + log1pf(expf(-fabsf(x - y)));
    const float wa = expf(x - merged);
    const float wb = expf(y - merged);
    // Rounded multiplies and add, as the host computes them: a fused
    // multiply-add would round once less and differ in the last bit.
    for (int64_t c = lane; c < a.head_dim; c += 32) {
      acc[c] = __fadd_rn(__fmul_rn(acc[c], wa), __fmul_rn(part[c], wb));
    }
  }
  // Every lane has read the running lse before it changes.
  __syncwarp();
  if (lane == 0) a.lse[row] = merged;
}

// dst[i] = src[i] rounded to `dtype` (fp32 copies), grid-stride over n.
// dst: [n] elements of dtype; src: [n] fp32.
__global__ void __launch_bounds__(kThreads)
    FromF32Kernel(const float* src, void* dst, int64_t n, DType dtype) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    switch (dtype) {
      case DType::kF32:
        static_cast<float*>(dst)[i] = src[i];
        break;
      case DType::kBF16:
        static_cast<uint16_t*>(dst)[i] = F32ToBf16(src[i]);
        break;
      case DType::kF16:
        static_cast<uint16_t*>(dst)[i] = F32ToF16(src[i]);
        break;
    }
  }
}

// dst[r * dst_stride + c] += src[r * src_stride + c] for r < rows, c < cols,
// grid-stride over rows * cols: the ring adds its dK/dV share into the
// accumulator that travels (one row) and a halo's gradients onto the
// shard's tail rows (many). One rounded fp32 add each, as the host's.
// dst: [rows, dst_stride]; src: [rows, src_stride] fp32.
__global__ void __launch_bounds__(kThreads)
    AddKernel(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
              int64_t cols) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t r = i / cols;
    const int64_t c = i - r * cols;
    float* d = dst + r * dst_stride + c;
    *d = __fadd_rn(*d, src[r * src_stride + c]);
  }
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_MERGE_KERNELS_CUH_
