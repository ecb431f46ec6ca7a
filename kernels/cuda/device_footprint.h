#ifndef RINGATTN_KERNELS_CUDA_DEVICE_FOOTPRINT_H_
#define RINGATTN_KERNELS_CUDA_DEVICE_FOOTPRINT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/attention_shape.h"
#include "kernels/cuda/launch_plan.h"

// The device memory the CUDA backend needs to run chunk steps of one shape,
// buffer by buffer, and the admission rule that compares it with what the
// device has free. Pure host code, so the accounting is unit-tested without
// a GPU; the backend asks before it allocates anything.

namespace ringattn::kernels::cuda {

// Bytes per device buffer of the backend (cuda_backend.cc), for steps of
// `shape` (q: [B, H, Lq, D], k/v: [B, Hkv, Lk, D] in shape.dtype).
struct StepFootprint {
  int64_t q = 0, k = 0, v = 0;      // dtype
  int64_t q_meta = 0, kv_meta = 0;  // doc and vision int32 + padding uint8, per token
  int64_t out = 0;                  // forward: fp32 partial; backward: dtype final output
  int64_t dout = 0;                 // backward: dtype
  int64_t lse = 0;                  // [B, H, Lq] fp32
  int64_t dq = 0, dk = 0, dv = 0;   // backward: fp32
  int64_t workspace = 0;            // The launch plan's, forward or backward

  int64_t total() const {
    return q + k + v + q_meta + kv_meta + out + dout + lse + dq + dk + dv + workspace;
  }
};

// Forward steps, or backward steps (which also need what forward needs:
// a session admitted for forward must be able to run its backward).
StepFootprint StepDeviceFootprint(const AttentionShape& shape, const LaunchPlan& plan,
                                  bool backward);

// OK when `needed` more bytes fit in `free_bytes`; RESOURCE_EXHAUSTED
// naming the bytes needed, free and total of `device` otherwise.
absl::Status CheckDeviceFits(int64_t needed, int64_t free_bytes, int64_t total_bytes,
                             absl::string_view device);

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_DEVICE_FOOTPRINT_H_
