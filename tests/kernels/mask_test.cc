#include "kernels/mask.h"

#include "gtest/gtest.h"

namespace ringattn::kernels {
namespace {

TokenInfo Tok(int64_t pos, int32_t doc = 1, int32_t vision = -1, bool padding = false) {
  return TokenInfo{pos, doc, vision, padding};
}

MaskRule Full(bool causal = true) {
  LayerConfig layer;
  layer.kind = LayerKind::kFull;
  layer.causal = causal;
  return MaskRuleFor(layer);
}

MaskRule Sliding(int64_t window, bool vision = true, bool causal = true) {
  LayerConfig layer;
  layer.kind = LayerKind::kSliding;
  layer.window = window;
  layer.vision_bidirectional = vision;
  layer.causal = causal;
  return MaskRuleFor(layer);
}

TEST(MaskTest, CausalAttendsPastAndSelfOnly) {
  EXPECT_TRUE(Allowed(Full(), Tok(5), Tok(5)));
  EXPECT_TRUE(Allowed(Full(), Tok(5), Tok(0)));
  EXPECT_FALSE(Allowed(Full(), Tok(5), Tok(6)));
}

TEST(MaskTest, NonCausalAttendsFuture) {
  EXPECT_TRUE(Allowed(Full(/*causal=*/false), Tok(5), Tok(6)));
}

TEST(MaskTest, WindowBoundaryIsStrict) {
  const MaskRule rule = Sliding(4);
  EXPECT_TRUE(Allowed(rule, Tok(10), Tok(7)));   // q - k = W - 1
  EXPECT_FALSE(Allowed(rule, Tok(10), Tok(6)));  // q - k = W
  EXPECT_FALSE(Allowed(rule, Tok(10), Tok(11)));
}

TEST(MaskTest, FullLayerHasNoWindow) {
  LayerConfig layer;
  layer.kind = LayerKind::kFull;
  layer.window = 4;
  EXPECT_TRUE(Allowed(MaskRuleFor(layer), Tok(100), Tok(0)));
}

TEST(MaskTest, VisionGroupOverridesCausalityAndWindowOnSlidingLayers) {
  const MaskRule rule = Sliding(2);
  EXPECT_TRUE(Allowed(rule, Tok(3, 1, 0), Tok(9, 1, 0)));     // future, same group
  EXPECT_TRUE(Allowed(rule, Tok(9, 1, 0), Tok(3, 1, 0)));     // out of window
  EXPECT_FALSE(Allowed(rule, Tok(3, 1, 0), Tok(9, 1, 1)));    // other group
  EXPECT_FALSE(Allowed(rule, Tok(3, 1, -1), Tok(9, 1, -1)));  // text is not a group
}

TEST(MaskTest, VisionOverrideOffWhenDisabledOrOnFullLayers) {
  EXPECT_FALSE(Allowed(Sliding(2, /*vision=*/false), Tok(3, 1, 0), Tok(9, 1, 0)));
  EXPECT_FALSE(Allowed(Full(), Tok(3, 1, 0), Tok(9, 1, 0)));
}

TEST(MaskTest, VisionNeverCrossesDocuments) {
  EXPECT_FALSE(Allowed(Sliding(64), Tok(3, 1, 0), Tok(2, 2, 0)));
}

TEST(MaskTest, DocumentsNeverAttendAcross) {
  EXPECT_FALSE(Allowed(Full(), Tok(5, 2), Tok(4, 1)));
  EXPECT_TRUE(Allowed(Full(), Tok(5, 2), Tok(4, 2)));
}

TEST(MaskTest, NonPositiveDocumentAttendsNothing) {
  EXPECT_FALSE(Allowed(Full(), Tok(5, 0), Tok(4, 0)));
  EXPECT_FALSE(Allowed(Full(), Tok(5, -1), Tok(4, -1)));
}

TEST(MaskTest, PaddingNeverAttendsNorIsAttended) {
  EXPECT_FALSE(Allowed(Full(), Tok(5, 1, -1, true), Tok(4)));
  EXPECT_FALSE(Allowed(Full(), Tok(5), Tok(4, 1, -1, true)));
  EXPECT_FALSE(Allowed(Sliding(8), Tok(5, 1, 0, true), Tok(6, 1, 0)));
}

TEST(MaskTest, CombinedRules) {
  const MaskRule rule = Sliding(3);
  // Same document, in window, past: attends.
  EXPECT_TRUE(Allowed(rule, Tok(20, 3), Tok(18, 3)));
  // Same document, in window, but other document id: no.
  EXPECT_FALSE(Allowed(rule, Tok(20, 3), Tok(18, 4)));
  // Image block of one document, future and out of window, attends.
  EXPECT_TRUE(Allowed(rule, Tok(20, 3, 5), Tok(30, 3, 5)));
  // ... but not once the key is padding.
  EXPECT_FALSE(Allowed(rule, Tok(20, 3, 5), Tok(30, 3, 5, true)));
}

}  // namespace
}  // namespace ringattn::kernels
