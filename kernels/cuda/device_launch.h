#ifndef RINGATTN_KERNELS_CUDA_DEVICE_LAUNCH_H_
#define RINGATTN_KERNELS_CUDA_DEVICE_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/launch_plan.h"
#include "kernels/dtype.h"
#include "kernels/mask.h"

// Device-pointer entry points of the CUDA chunk kernels, for callers that
// keep their tensors on the GPU (a device-resident ring). They only enqueue
// work on `stream`; the caller synchronizes. Arguments are trusted the way
// kernel parameters are: the host backend (cuda_backend.h) validates first.
// cuda_runtime_api.h is a plain C header, so the C++ compiler builds
// callers of this file; no nvcc needed.

namespace ringattn::kernels::cuda {

struct ForwardDeviceParams {
  AttentionShape shape;
  const void* q = nullptr;      // [B, H, Lq, D] dtype, device
  const void* k = nullptr;      // [B, Hkv, Lk, D] dtype, device
  const void* v = nullptr;      // [B, Hkv, Lk, D] dtype, device
  DeviceMeta q_meta;            // [B, Lq], device
  DeviceMeta kv_meta;           // [B, Lk], device
  MaskRule mask;                // MaskRuleFor(layer)
  float scale = 1.0f;           // layer.scale
  float* out = nullptr;         // [B, H, Lq, D] fp32 chunk partial, overwritten
  float* lse = nullptr;         // [B, H, Lq] fp32, overwritten; -inf: nothing attends
  void* workspace = nullptr;    // Device scratch of workspace_bytes
  int64_t workspace_bytes = 0;  // >= LaunchPlan::forward_workspace_bytes
};

struct BackwardDeviceParams {
  AttentionShape shape;
  const void* q = nullptr;      // [B, H, Lq, D] dtype, device
  const void* k = nullptr;      // [B, Hkv, Lk, D] dtype, device
  const void* v = nullptr;      // [B, Hkv, Lk, D] dtype, device
  const void* out = nullptr;    // [B, H, Lq, D] dtype final (merged) forward output
  const void* dout = nullptr;   // [B, H, Lq, D] dtype
  const float* lse = nullptr;   // [B, H, Lq] final merged log-sum-exp
  DeviceMeta q_meta;            // [B, Lq], device
  DeviceMeta kv_meta;           // [B, Lk], device
  MaskRule mask;                // MaskRuleFor(layer)
  float scale = 1.0f;           // layer.scale
  float* dq = nullptr;          // [B, H, Lq, D] fp32, accumulated (+=)
  float* dk = nullptr;          // [B, Hkv, Lk, D] fp32, accumulated (+=)
  float* dv = nullptr;          // [B, Hkv, Lk, D] fp32, accumulated (+=)
  void* workspace = nullptr;    // Device scratch of workspace_bytes
  int64_t workspace_bytes = 0;  // >= LaunchPlan::backward_workspace_bytes
};

// Merges a chunk's partial O/LSE into the running result on the device,
// with the rules and rounding of kernels::MergePartial (SPEC §3).
struct MergeDeviceParams {
  float* out = nullptr;          // [rows, D] fp32 running output, updated
  float* lse = nullptr;          // [rows] fp32 running log-sum-exp, updated
  const float* o_s = nullptr;    // [rows, D] fp32 the chunk's partial output
  const float* lse_s = nullptr;  // [rows] fp32 the chunk's log-sum-exp
  int64_t rows = 0;
  int64_t head_dim = 0;
};

// The capabilities of the current device (cudaGetDevice).
absl::StatusOr<DeviceCaps> CurrentDeviceCaps();

// Enqueue with a plan made for the same shape (MakeLaunchPlan).
absl::Status LaunchForward(const ForwardDeviceParams& params, const LaunchPlan& plan,
                           cudaStream_t stream);
absl::Status LaunchBackward(const BackwardDeviceParams& params, const LaunchPlan& plan,
                            cudaStream_t stream);

// INVALID_ARGUMENT for negative sizes or missing pointers; then enqueues.
absl::Status LaunchMergePartial(const MergeDeviceParams& params, cudaStream_t stream);

// dst: [rows, dst_stride] += src: [rows, src_stride] fp32 over the first
// `cols` of each row, as MemorySpace::Add adds. INVALID_ARGUMENT for
// negative sizes, strides below cols or missing pointers; then enqueues.
absl::Status LaunchAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                       int64_t rows, int64_t cols, cudaStream_t stream);

// dst: [n] dtype <- src: [n] fp32, rounded as kernels::FromF32 rounds.
absl::Status LaunchFromF32(const float* src, int64_t n, DType dtype, void* dst,
                           cudaStream_t stream);

// Same, planning for the current device first.
absl::Status LaunchForward(const ForwardDeviceParams& params, cudaStream_t stream);
absl::Status LaunchBackward(const BackwardDeviceParams& params, cudaStream_t stream);

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_DEVICE_LAUNCH_H_
