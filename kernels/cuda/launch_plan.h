#ifndef RINGATTN_KERNELS_CUDA_LAUNCH_PLAN_H_
#define RINGATTN_KERNELS_CUDA_LAUNCH_PLAN_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/tile_config.h"

// How the CUDA kernels are launched for one chunk problem: head-dim bucket,
// tiles, grids, shared memory and workspace. Pure host code (no CUDA
// headers), so every decision here is unit-tested on machines without a GPU.
// The caller asks CanImplement before it runs, as with a CUTLASS operator.

namespace ringattn::kernels::cuda {

// What the plan needs to know about the GPU.
struct DeviceCaps {
  int sm_major = 0;  // Compute capability; kernels need >= 8.0
  int sm_minor = 0;
  int64_t max_smem_per_block = 0;  // Opt-in dynamic shared memory per block, bytes
};

// The capabilities of an A100 (sm80) and an H100 (sm90), for tests and for
// planning without a device.
inline constexpr DeviceCaps kSm80Caps{8, 0, kSm80MaxSmemPerBlock};
inline constexpr DeviceCaps kSm90Caps{9, 0, 232448};

struct LaunchPlan {
  int head_dim_bucket = 0;        // Template bucket: 64, 128, 256 or 512
  int head_dim_padded = 0;        // D rounded up to 16: the depth of the tile GEMMs
  TileShape forward_tiles;        // Query / key tile rows of the forward kernel
  TileShape backward_tiles;       // Query / key tile rows of both backward kernels
  int64_t forward_q_tiles = 0;    // ceil(Lq / forward_tiles.bq)
  int64_t forward_kv_tiles = 0;   // ceil(Lk / forward_tiles.bk)
  int64_t backward_q_tiles = 0;   // ceil(Lq / backward_tiles.bq)
  int64_t backward_kv_tiles = 0;  // ceil(Lk / backward_tiles.bk)
  KernelLaunch forward;           // grid (q tiles, B * H)
  KernelLaunch backward_dkdv;     // grid (kv tiles, B * Hkv)
  KernelLaunch backward_dq;       // grid (q tiles, B * H)
  // Device workspace, bytes, and where its parts start (256-byte aligned).
  int64_t forward_workspace_bytes = 0;
  int64_t forward_q_summaries_at = 0;   // [B, forward_q_tiles] TileSummary
  int64_t forward_kv_summaries_at = 0;  // [B, forward_kv_tiles] TileSummary
  int64_t backward_workspace_bytes = 0;
  int64_t backward_q_summaries_at = 0;   // [B, backward_q_tiles] TileSummary
  int64_t backward_kv_summaries_at = 0;  // [B, backward_kv_tiles] TileSummary
  int64_t backward_delta_at = 0;         // [B, H, Lq] fp32
};

// OK when the kernels can run `shape` on a device with `caps`; otherwise
// INVALID_ARGUMENT for a shape no kernel supports, FAILED_PRECONDITION for a
// device that is too old or too small. Messages name the limit.
absl::Status CanImplement(const AttentionShape& shape, const DeviceCaps& caps);

absl::StatusOr<LaunchPlan> MakeLaunchPlan(const AttentionShape& shape, const DeviceCaps& caps);

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_LAUNCH_PLAN_H_
