#include "kernels/cuda/device_launch.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/impl/dispatch.h"
#include "kernels/cuda/impl/merge_kernel_args.h"
#include "kernels/cuda/impl/merge_launch.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels::cuda {
namespace {

absl::Status CheckWorkspace(const void* workspace, int64_t have, int64_t need) {
  if (need > 0 && (workspace == nullptr || have < need)) {
    return absl::InvalidArgumentError(
        absl::StrCat("workspace of ", have, " bytes, the plan needs ", need));
  }
  return absl::OkStatus();
}

template <typename Params>
AttentionParams Common(const Params& d) {
  AttentionParams p;
  p.shape = d.shape;
  p.group = d.shape.heads / d.shape.kv_heads;
  p.q = d.q;
  p.k = d.k;
  p.v = d.v;
  p.q_meta = d.q_meta;
  p.kv_meta = d.kv_meta;
  p.mask = d.mask;
  p.scale = d.scale;
  return p;
}

template <typename T>
T* At(void* base, int64_t offset) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(base) + offset);
}

}  // namespace

absl::StatusOr<DeviceCaps> CurrentDeviceCaps() {
  int device = 0;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  DeviceCaps caps;
  int smem = 0;
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&caps.sm_major, cudaDevAttrComputeCapabilityMajor, device));
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&caps.sm_minor, cudaDevAttrComputeCapabilityMinor, device));
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  caps.max_smem_per_block = smem;
  return caps;
}

absl::Status LaunchForward(const ForwardDeviceParams& params, const LaunchPlan& plan,
                           cudaStream_t stream) {
  RINGATTN_RETURN_IF_ERROR(
      CheckWorkspace(params.workspace, params.workspace_bytes, plan.forward_workspace_bytes));
  AttentionParams p = Common(params);
  p.q_tiles = plan.forward_q_tiles;
  p.kv_tiles = plan.forward_kv_tiles;
  p.q_summaries = At<TileSummary>(params.workspace, plan.forward_q_summaries_at);
  p.kv_summaries = At<TileSummary>(params.workspace, plan.forward_kv_summaries_at);
  p.out = params.out;
  p.lse = params.lse;
  return ToStatus(impl::RunForward(p, plan.forward_tiles, plan.forward, stream));
}

absl::Status LaunchBackward(const BackwardDeviceParams& params, const LaunchPlan& plan,
                            cudaStream_t stream) {
  RINGATTN_RETURN_IF_ERROR(
      CheckWorkspace(params.workspace, params.workspace_bytes, plan.backward_workspace_bytes));
  AttentionParams p = Common(params);
  p.q_tiles = plan.backward_q_tiles;
  p.kv_tiles = plan.backward_kv_tiles;
  p.q_summaries = At<TileSummary>(params.workspace, plan.backward_q_summaries_at);
  p.kv_summaries = At<TileSummary>(params.workspace, plan.backward_kv_summaries_at);
  p.delta = At<float>(params.workspace, plan.backward_delta_at);
  p.fwd_out = params.out;
  p.dout = params.dout;
  p.final_lse = params.lse;
  p.dq = params.dq;
  p.dk = params.dk;
  p.dv = params.dv;
  return ToStatus(
      impl::RunBackward(p, plan.backward_tiles, plan.backward_dkdv, plan.backward_dq, stream));
}

absl::Status LaunchMergePartial(const MergeDeviceParams& params, cudaStream_t stream) {
  if (params.rows < 0 || params.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("merge of ", params.rows, " rows of head dim ", params.head_dim));
  }
  if (params.rows > 0 && (params.out == nullptr || params.lse == nullptr || params.o_s == nullptr ||
                          params.lse_s == nullptr)) {
    return absl::InvalidArgumentError("merge: a device pointer is null");
  }
  impl::MergeArgs a;
  a.out = params.out;
  a.lse = params.lse;
  a.o_s = params.o_s;
  a.lse_s = params.lse_s;
  a.rows = params.rows;
  a.head_dim = params.head_dim;
  return ToStatus(impl::RunMergePartial(a, stream));
}

absl::Status LaunchAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                       int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || dst_stride < cols || src_stride < cols ||
      (rows > 0 && cols > 0 && (dst == nullptr || src == nullptr))) {
    return absl::InvalidArgumentError(absl::StrCat("add of ", rows, " rows of ", cols,
                                                   " over strides ", dst_stride, "/", src_stride));
  }
  return ToStatus(impl::RunAdd(dst, dst_stride, src, src_stride, rows, cols, stream));
}

absl::Status LaunchFromF32(const float* src, int64_t n, DType dtype, void* dst,
                           cudaStream_t stream) {
  if (n < 0 || (n > 0 && (src == nullptr || dst == nullptr))) {
    return absl::InvalidArgumentError(
        absl::StrCat("conversion of ", n, " values to ", DTypeName(dtype), " without buffers"));
  }
  return ToStatus(impl::RunFromF32(src, dst, n, dtype, stream));
}

absl::Status LaunchForward(const ForwardDeviceParams& params, cudaStream_t stream) {
  RINGATTN_ASSIGN_OR_RETURN(const DeviceCaps caps, CurrentDeviceCaps());
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(params.shape, caps));
  return LaunchForward(params, plan, stream);
}

absl::Status LaunchBackward(const BackwardDeviceParams& params, cudaStream_t stream) {
  RINGATTN_ASSIGN_OR_RETURN(const DeviceCaps caps, CurrentDeviceCaps());
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(params.shape, caps));
  return LaunchBackward(params, plan, stream);
}

}  // namespace ringattn::kernels::cuda
