#include "kernels/cuda/device_footprint.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ringattn::kernels::cuda {

StepFootprint StepDeviceFootprint(const AttentionShape& shape, const LaunchPlan& plan,
                                  bool backward) {
  const int64_t elem = static_cast<int64_t>(DTypeSize(shape.dtype));
  const int64_t q_elems = shape.batch * shape.heads * shape.q_len * shape.head_dim;
  const int64_t kv_elems = shape.batch * shape.kv_heads * shape.kv_len * shape.head_dim;
  constexpr int64_t kMetaPerToken = 2 * sizeof(int32_t) + sizeof(uint8_t);
  constexpr int64_t kF32 = sizeof(float);
  StepFootprint f;
  f.q = q_elems * elem;
  f.k = kv_elems * elem;
  f.v = kv_elems * elem;
  f.q_meta = shape.batch * shape.q_len * kMetaPerToken;
  f.kv_meta = shape.batch * shape.kv_len * kMetaPerToken;
  f.lse = shape.batch * shape.heads * shape.q_len * kF32;
  // Buffers only grow, and one buffer serves the forward's fp32 partial and
  // the backward's dtype output: it holds the larger.
  f.out = q_elems * kF32;
  f.workspace = plan.forward_workspace_bytes;
  if (backward) {
    f.out = std::max(f.out, q_elems * elem);
    f.dout = q_elems * elem;
    f.dq = q_elems * kF32;
    f.dk = kv_elems * kF32;
    f.dv = kv_elems * kF32;
    f.workspace = std::max(plan.forward_workspace_bytes, plan.backward_workspace_bytes);
  }
  return f;
}

absl::Status CheckDeviceFits(int64_t needed, int64_t free_bytes, int64_t total_bytes,
                             absl::string_view device) {
  if (needed <= free_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("the call needs ", needed, " more bytes of device memory on ", device, "; ",
                   free_bytes, " of ", total_bytes, " bytes are free"));
}

}  // namespace ringattn::kernels::cuda
