#include "server/coordinator/layout_choice.h"

#include "gtest/gtest.h"

namespace ringattn::coordinator {
namespace {

using attention::v1::SHARD_LAYOUT_AUTO;
using attention::v1::SHARD_LAYOUT_CONTIGUOUS;
using attention::v1::SHARD_LAYOUT_ZIGZAG;
using batch::LayoutKind;

kernels::LayerConfig Sliding(int64_t window) {
  kernels::LayerConfig layer;
  layer.kind = kernels::LayerKind::kSliding;
  layer.window = window;
  return layer;
}

TEST(LayoutChoiceTest, AutoPicksZigzagForFullCausalLayersOnARing) {
  const kernels::LayerConfig full;
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, full, 4096, 1), LayoutKind::kContiguous);
  for (int cp : {2, 4, 8}) {
    EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, full, 4096, cp), LayoutKind::kZigzag);
  }
  kernels::LayerConfig encoder;
  encoder.causal = false;  // Already balanced.
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, encoder, 4096, 4), LayoutKind::kContiguous);
}

TEST(LayoutChoiceTest, AutoPicksContiguousForSlidingLayersTheWindowBounds) {
  // W = 512 within L = 4096 (S = 16384 on 4 ranks): only the previous shard.
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, Sliding(512), 16384, 4), LayoutKind::kContiguous);
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, Sliding(512), 8192, 2), LayoutKind::kContiguous);
  // W = 1500 over L = 1024 on 8 ranks: 2 exchanges of 7.
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, Sliding(1500), 8192, 8), LayoutKind::kContiguous);
  // A window reaching every shard bounds nothing: balance instead.
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, Sliding(3000), 4096, 4), LayoutKind::kZigzag);
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_AUTO, Sliding(int64_t{1} << 62), 4096, 4),
            LayoutKind::kZigzag);
}

TEST(LayoutChoiceTest, ACallerForcesALayout) {
  const kernels::LayerConfig full;
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_CONTIGUOUS, full, 4096, 4), LayoutKind::kContiguous);
  EXPECT_EQ(ChooseLayoutKind(SHARD_LAYOUT_ZIGZAG, Sliding(512), 16384, 4), LayoutKind::kZigzag);
  absl::StatusOr<batch::ShardLayout> layout = LayoutForCall(SHARD_LAYOUT_ZIGZAG, full, 200, 4);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->padded_len(), 200);
  EXPECT_EQ(layout->Segments(0).size(), 2u);
  EXPECT_EQ(LayoutToProto(layout->kind()), SHARD_LAYOUT_ZIGZAG);
  EXPECT_EQ(LayoutForCall(static_cast<attention::v1::ShardLayout>(7), full, 200, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ringattn::coordinator
