#include "kernels/cuda/launch_plan.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/tile_config.h"

namespace ringattn::kernels::cuda {
namespace {

AttentionShape Shape(DType dtype, int64_t d, int64_t b = 2, int64_t h = 8, int64_t hkv = 2,
                     int64_t lq = 1000, int64_t lk = 777) {
  return AttentionShape{dtype, b, h, hkv, lq, lk, d};
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

TEST(LaunchPlanTest, HeadDimBuckets) {
  EXPECT_EQ(HeadDimBucket(0), 0);
  EXPECT_EQ(HeadDimBucket(1), 64);
  EXPECT_EQ(HeadDimBucket(64), 64);
  EXPECT_EQ(HeadDimBucket(65), 128);
  EXPECT_EQ(HeadDimBucket(80), 128);
  EXPECT_EQ(HeadDimBucket(128), 128);
  EXPECT_EQ(HeadDimBucket(129), 256);
  EXPECT_EQ(HeadDimBucket(256), 256);
  EXPECT_EQ(HeadDimBucket(257), 512);
  EXPECT_EQ(HeadDimBucket(512), 512);
  EXPECT_EQ(HeadDimBucket(513), 0);
}

// Every head dim 1..512 in every dtype plans on an A100, so one plan serves
// sm80 and sm90 alike.
TEST(LaunchPlanTest, EveryHeadDimAndDtypeFitsSm80) {
  for (DType dt : kDtypes) {
    for (int64_t d = 1; d <= 512; ++d) {
      absl::StatusOr<LaunchPlan> plan = MakeLaunchPlan(Shape(dt, d), kSm80Caps);
      ASSERT_TRUE(plan.ok()) << DTypeName(dt) << " D=" << d << ": " << plan.status();
      EXPECT_EQ(plan->head_dim_bucket, HeadDimBucket(d));
      EXPECT_EQ(plan->head_dim_padded % 16, 0);
      EXPECT_GE(plan->head_dim_padded, d);
      EXPECT_LT(plan->head_dim_padded - d, 16);
      EXPECT_LE(plan->head_dim_padded, plan->head_dim_bucket);
      for (const KernelLaunch* k : {&plan->forward, &plan->backward_dkdv, &plan->backward_dq}) {
        EXPECT_LE(k->smem_bytes, kSm80Caps.max_smem_per_block);
        EXPECT_GT(k->smem_bytes, 0);
        EXPECT_EQ(k->threads, kThreads);
      }
    }
  }
}

TEST(LaunchPlanTest, GridsCoverEveryTileAndHead) {
  for (DType dt : kDtypes) {
    for (int64_t d : {64, 80, 128, 256, 512}) {
      const AttentionShape s = Shape(dt, d, 3, 8, 2, 1000, 777);
      absl::StatusOr<LaunchPlan> plan = MakeLaunchPlan(s, kSm90Caps);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const TileShape f = plan->forward_tiles;
      const TileShape b = plan->backward_tiles;
      EXPECT_EQ(plan->forward_q_tiles, CeilDiv(1000, f.bq));
      EXPECT_EQ(plan->forward_kv_tiles, CeilDiv(777, f.bk));
      EXPECT_EQ(plan->forward.grid_x, plan->forward_q_tiles);
      EXPECT_EQ(plan->forward.grid_y, 3 * 8);
      EXPECT_EQ(plan->backward_dkdv.grid_x, CeilDiv(777, b.bk));
      EXPECT_EQ(plan->backward_dkdv.grid_y, 3 * 2);
      EXPECT_EQ(plan->backward_dq.grid_x, CeilDiv(1000, b.bq));
      EXPECT_EQ(plan->backward_dq.grid_y, 3 * 8);
    }
  }
}

// Tensor-core tiles are whole 16x16 WMMA fragments; fp32 tiles whole 4x4
// register tiles; WMMA leading dimensions are multiples of 8 (16-bit) and
// 4 (fp32) elements.
TEST(LaunchPlanTest, TilesMeetKernelConstraints) {
  for (int bucket : {64, 128, 256, 512}) {
    for (const TileShape t : {ForwardTiles(2, bucket), BackwardTiles(2, bucket)}) {
      EXPECT_EQ(t.bq % 16, 0) << bucket;
      EXPECT_EQ(t.bk % 16, 0) << bucket;
      EXPECT_EQ(LdProb(t.bk) % 8, 0);
      EXPECT_EQ(LdScore(t.bk) % 4, 0);
    }
    for (const TileShape t : {ForwardTiles(4, bucket), BackwardTiles(4, bucket)}) {
      EXPECT_EQ(t.bq % 4, 0) << bucket;
      EXPECT_EQ(t.bk % 4, 0) << bucket;
    }
    EXPECT_EQ(LdInput(bucket) % 8, 0);
    EXPECT_EQ(LdAcc(bucket) % 4, 0);
  }
}

// Shared-memory regions are 128-byte aligned (WMMA needs 32) and disjoint.
void ExpectDisjointAligned(std::vector<std::pair<int64_t, int64_t>> regions, int64_t total,
                           const std::string& what) {
  std::sort(regions.begin(), regions.end());
  int64_t end = 0;
  for (const auto& [at, bytes] : regions) {
    EXPECT_EQ(at % 128, 0) << what;
    EXPECT_GE(at, end) << what << ": overlapping regions";
    end = at + bytes;
  }
  EXPECT_LE(end, total) << what;
}

TEST(LaunchPlanTest, SharedMemoryLayoutsAreDisjointAndAligned) {
  const int64_t tok = sizeof(TokenInfo);
  for (int es : {2, 4}) {
    for (int bucket : {64, 128, 256, 512}) {
      const std::string what = "elem " + std::to_string(es) + " bucket " + std::to_string(bucket);
      const TileShape f = ForwardTiles(es, bucket);
      const ForwardSmem fs = ForwardSmemLayout(es, bucket, f);
      ExpectDisjointAligned({{fs.q, int64_t{f.bq} * LdInput(bucket) * es},
                             {fs.kv, int64_t{f.bk} * LdInput(bucket) * es},
                             {fs.o, int64_t{f.bq} * LdAcc(bucket) * 4},
                             {fs.s, int64_t{f.bq} * LdScore(f.bk) * 4},
                             {fs.p, int64_t{f.bq} * LdProb(f.bk) * es},
                             {fs.m, f.bq * 4},
                             {fs.l, f.bq * 4},
                             {fs.alpha, f.bq * 4},
                             {fs.q_tok, f.bq * tok},
                             {fs.k_tok, f.bk * tok}},
                            fs.total, "forward " + what);
      const TileShape b = BackwardTiles(es, bucket);
      for (bool dkdv : {true, false}) {
        const BackwardSmem bs = BackwardSmemLayout(es, bucket, b, dkdv);
        std::vector<std::pair<int64_t, int64_t>> regions = {
            {bs.q, int64_t{b.bq} * LdInput(bucket) * es},
            {bs.dout, int64_t{b.bq} * LdInput(bucket) * es},
            {bs.k, int64_t{b.bk} * LdInput(bucket) * es},
            {bs.v, int64_t{b.bk} * LdInput(bucket) * es},
            {bs.acc, int64_t{dkdv ? b.bk : b.bq} * LdAcc(bucket) * 4},
            {bs.s, int64_t{b.bq} * LdScore(b.bk) * 4},
            {bs.dp, int64_t{b.bq} * LdScore(b.bk) * 4},
            {bs.ds, int64_t{b.bq} * LdProb(b.bk) * es},
            {bs.lse, b.bq * 4},
            {bs.delta, b.bq * 4},
            {bs.q_tok, b.bq * tok},
            {bs.k_tok, b.bk * tok}};
        if (dkdv) {
          regions.push_back({bs.acc2, int64_t{b.bk} * LdAcc(bucket) * 4});
          regions.push_back({bs.p, int64_t{b.bq} * LdProb(b.bk) * es});
        }
        ExpectDisjointAligned(regions, bs.total,
                              (dkdv ? "backward dK/dV " : "backward dQ ") + what);
      }
    }
  }
}

TEST(LaunchPlanTest, WorkspaceHoldsSummariesAndDelta) {
  const AttentionShape s = Shape(DType::kBF16, 128, 2, 8, 2, 1000, 777);
  absl::StatusOr<LaunchPlan> plan = MakeLaunchPlan(s, kSm90Caps);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int64_t sum = sizeof(TileSummary);
  EXPECT_EQ(plan->forward_q_summaries_at % 256, 0);
  EXPECT_EQ(plan->forward_kv_summaries_at % 256, 0);
  EXPECT_GE(plan->forward_kv_summaries_at - plan->forward_q_summaries_at,
            2 * plan->forward_q_tiles * sum);
  EXPECT_GE(plan->forward_workspace_bytes - plan->forward_kv_summaries_at,
            2 * plan->forward_kv_tiles * sum);
  EXPECT_EQ(plan->backward_kv_summaries_at % 256, 0);
  EXPECT_EQ(plan->backward_delta_at % 256, 0);
  EXPECT_GE(plan->backward_kv_summaries_at - plan->backward_q_summaries_at,
            2 * plan->backward_q_tiles * sum);
  EXPECT_GE(plan->backward_delta_at - plan->backward_kv_summaries_at,
            2 * plan->backward_kv_tiles * sum);
  EXPECT_GE(plan->backward_workspace_bytes - plan->backward_delta_at, 2 * 8 * 1000 * 4);
}

TEST(LaunchPlanTest, RejectsWhatNoKernelSupports) {
  EXPECT_EQ(CanImplement(Shape(DType::kBF16, 513), kSm90Caps).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CanImplement(Shape(DType::kBF16, 0), kSm90Caps).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CanImplement(Shape(DType::kF16, 64, 1, 6, 4), kSm90Caps).code(),
            absl::StatusCode::kInvalidArgument);  // H % Hkv != 0
  EXPECT_EQ(CanImplement(Shape(DType::kF32, 64, 1, 8, 2, 0, 10), kSm90Caps).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CanImplement(Shape(DType::kF32, 64, 70000, 1, 1), kSm90Caps).code(),
            absl::StatusCode::kInvalidArgument);  // B * H over the grid limit
  EXPECT_TRUE(CanImplement(Shape(DType::kF32, 64, 65535, 1, 1), kSm90Caps).ok());
}

TEST(LaunchPlanTest, RejectsDevicesTooOldOrTooSmall) {
  const absl::Status old = CanImplement(Shape(DType::kBF16, 128), DeviceCaps{7, 5, 65536});
  EXPECT_EQ(old.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(old.message().find("7.5"), std::string::npos) << old;
  const absl::Status small = CanImplement(Shape(DType::kBF16, 512), DeviceCaps{8, 6, 49152});
  EXPECT_EQ(small.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(small.message().find("49152"), std::string::npos) << small;
  EXPECT_FALSE(MakeLaunchPlan(Shape(DType::kBF16, 512), DeviceCaps{8, 6, 49152}).ok());
}

}  // namespace
}  // namespace ringattn::kernels::cuda
