#include "kernels/cuda/launch_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels::cuda {
namespace {

// Grid y is limited to 65535 blocks; grid x to 2^31 - 1.
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
constexpr int64_t kWorkspaceAlign = 256;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t AlignUp(int64_t a, int64_t b) { return CeilDiv(a, b) * b; }

int ElemSize(DType dtype) { return static_cast<int>(DTypeSize(dtype)); }

}  // namespace

absl::Status CanImplement(const AttentionShape& shape, const DeviceCaps& caps) {
  if (caps.sm_major < 8) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA kernels need compute capability 8.0 or newer, the device has ",
                     caps.sm_major, ".", caps.sm_minor));
  }
  if (shape.dtype != DType::kF32 && shape.dtype != DType::kBF16 && shape.dtype != DType::kF16) {
    return absl::InvalidArgumentError("dtype must be FP32, BF16 or FP16");
  }
  if (shape.batch < 1 || shape.heads < 1 || shape.kv_heads < 1 || shape.q_len < 1 ||
      shape.kv_len < 1 || shape.head_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "every dimension must be positive: B=", shape.batch, " H=", shape.heads,
        " Hkv=", shape.kv_heads, " Lq=", shape.q_len, " Lk=", shape.kv_len, " D=", shape.head_dim));
  }
  if (shape.heads % shape.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "query heads (", shape.heads, ") must be a multiple of kv heads (", shape.kv_heads, ")"));
  }
  const int bucket = HeadDimBucket(shape.head_dim);
  if (bucket == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head dim ", shape.head_dim, " is not supported (1..512)"));
  }
  if (shape.batch * shape.heads > kMaxGridY) {
    return absl::InvalidArgumentError(
        absl::StrCat("B * H = ", shape.batch * shape.heads, " exceeds the grid limit ", kMaxGridY));
  }
  const int es = ElemSize(shape.dtype);
  const TileShape fwd = ForwardTiles(es, bucket);
  const TileShape bwd = BackwardTiles(es, bucket);
  const int64_t most_tiles = std::max(CeilDiv(shape.q_len, std::min(fwd.bq, bwd.bq)),
                                      CeilDiv(shape.kv_len, std::min(fwd.bk, bwd.bk)));
  if (most_tiles > kMaxGridX) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence too long for the grid: ", most_tiles, " tiles"));
  }
  const int64_t smem = std::max({ForwardSmemLayout(es, bucket, fwd).total,
                                 BackwardSmemLayout(es, bucket, bwd, true).total,
                                 BackwardSmemLayout(es, bucket, bwd, false).total});
  if (smem > caps.max_smem_per_block) {
    return absl::FailedPreconditionError(absl::StrCat(
        "head dim ", shape.head_dim, " in ", DTypeName(shape.dtype), " needs ", smem,
        " bytes of shared memory per block, the device allows ", caps.max_smem_per_block));
  }
  return absl::OkStatus();
}

absl::StatusOr<LaunchPlan> MakeLaunchPlan(const AttentionShape& shape, const DeviceCaps& caps) {
  RINGATTN_RETURN_IF_ERROR(CanImplement(shape, caps));
  const int es = ElemSize(shape.dtype);
  LaunchPlan plan;
  plan.head_dim_bucket = HeadDimBucket(shape.head_dim);
  plan.head_dim_padded = static_cast<int>(AlignUp(shape.head_dim, 16));
  plan.forward_tiles = ForwardTiles(es, plan.head_dim_bucket);
  plan.backward_tiles = BackwardTiles(es, plan.head_dim_bucket);
  plan.forward_q_tiles = CeilDiv(shape.q_len, plan.forward_tiles.bq);
  plan.forward_kv_tiles = CeilDiv(shape.kv_len, plan.forward_tiles.bk);
  plan.backward_q_tiles = CeilDiv(shape.q_len, plan.backward_tiles.bq);
  plan.backward_kv_tiles = CeilDiv(shape.kv_len, plan.backward_tiles.bk);

  const int64_t bh = shape.batch * shape.heads;
  const int64_t bhkv = shape.batch * shape.kv_heads;
  plan.forward = {plan.forward_q_tiles, bh, kThreads,
                  ForwardSmemLayout(es, plan.head_dim_bucket, plan.forward_tiles).total};
  plan.backward_dkdv = {
      plan.backward_kv_tiles, bhkv, kThreads,
      BackwardSmemLayout(es, plan.head_dim_bucket, plan.backward_tiles, true).total};
  plan.backward_dq = {
      plan.backward_q_tiles, bh, kThreads,
      BackwardSmemLayout(es, plan.head_dim_bucket, plan.backward_tiles, false).total};

  const int64_t summary = static_cast<int64_t>(sizeof(TileSummary));
  int64_t at = 0;
  plan.forward_q_summaries_at = at;
  at += AlignUp(shape.batch * plan.forward_q_tiles * summary, kWorkspaceAlign);
  plan.forward_kv_summaries_at = at;
  at += AlignUp(shape.batch * plan.forward_kv_tiles * summary, kWorkspaceAlign);
  plan.forward_workspace_bytes = at;

  at = 0;
  plan.backward_q_summaries_at = at;
  at += AlignUp(shape.batch * plan.backward_q_tiles * summary, kWorkspaceAlign);
  plan.backward_kv_summaries_at = at;
  at += AlignUp(shape.batch * plan.backward_kv_tiles * summary, kWorkspaceAlign);
  plan.backward_delta_at = at;
  at += AlignUp(bh * shape.q_len * 4, kWorkspaceAlign);
  plan.backward_workspace_bytes = at;
  return plan;
}

}  // namespace ringattn::kernels::cuda
