#include "kernels/block_classification.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::kernels {
namespace {

struct Tokens {
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  int64_t start = 0;
  TileSummary Summary() const {
    return Summarize(doc.data(), vision.data(), padding.data(), start,
                     static_cast<int32_t>(doc.size()));
  }
  TokenInfo At(size_t i) const {
    return TokenInfo{start + static_cast<int64_t>(i), doc[i], vision[i], padding[i] != 0};
  }
};

Tokens Uniform(int64_t start, int n, int32_t doc) {
  return Tokens{std::vector<int32_t>(n, doc), std::vector<int32_t>(n, -1),
                std::vector<uint8_t>(n, 0), start};
}

// Random tiles whose metadata looks like real batches: runs of documents,
// occasional image runs, trailing padding.
Tokens RandomTokens(std::mt19937& rng, int64_t start, int n) {
  Tokens t = Uniform(start, n, 1);
  int32_t doc = 1 + static_cast<int32_t>(rng() % 3);
  int32_t group = static_cast<int32_t>(rng() % 3);
  bool image = false;
  const int pad_from = rng() % 4 == 0 ? static_cast<int>(rng() % n) : n;
  for (int i = 0; i < n; ++i) {
    if (rng() % 16 == 0) doc += 1;
    if (rng() % 8 == 0) {
      image = !image;
      if (image) group += 1;
    }
    t.doc[i] = i >= pad_from ? 0 : doc;
    t.padding[i] = i >= pad_from;
    t.vision[i] = image && i < pad_from ? group : -1;
  }
  return t;
}

TEST(BlockClassificationTest, ClassificationIsConservativeOnRandomTiles) {
  std::mt19937 rng(1234);
  int empty = 0, full = 0, partial = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    LayerConfig layer;
    layer.kind = rng() % 2 ? LayerKind::kSliding : LayerKind::kFull;
    layer.window = 1 + rng() % 40;
    layer.causal = rng() % 5 != 0;
    layer.vision_bidirectional = rng() % 2;
    const MaskRule rule = MaskRuleFor(layer);
    const int n = 1 + static_cast<int>(rng() % 16);
    const Tokens q = RandomTokens(rng, rng() % 64, n);
    const Tokens k = RandomTokens(rng, rng() % 64, 1 + static_cast<int>(rng() % 16));
    int allowed = 0;
    for (size_t i = 0; i < q.doc.size(); ++i) {
      for (size_t j = 0; j < k.doc.size(); ++j) allowed += Allowed(rule, q.At(i), k.At(j));
    }
    const int pairs = static_cast<int>(q.doc.size() * k.doc.size());
    switch (Classify(rule, q.Summary(), k.Summary())) {
      case TileClass::kEmpty:
        ++empty;
        ASSERT_EQ(allowed, 0) << "trial " << trial << " skipped a tile that attends";
        break;
      case TileClass::kFull:
        ++full;
        ASSERT_EQ(allowed, pairs) << "trial " << trial << " unmasked a masked pair";
        break;
      case TileClass::kPartial:
        ++partial;
        break;
    }
  }
  // The property is only meaningful if every class actually occurs.
  EXPECT_GT(empty, 1000);
  EXPECT_GT(full, 100);
  EXPECT_GT(partial, 1000);
}

TEST(BlockClassificationTest, CausalFutureTileIsEmpty) {
  const MaskRule rule = MaskRuleFor(LayerConfig{});
  EXPECT_EQ(Classify(rule, Uniform(0, 64, 1).Summary(), Uniform(64, 64, 1).Summary()),
            TileClass::kEmpty);
}

TEST(BlockClassificationTest, PastTileOfOneDocumentIsFull) {
  const MaskRule rule = MaskRuleFor(LayerConfig{});
  EXPECT_EQ(Classify(rule, Uniform(64, 64, 1).Summary(), Uniform(0, 64, 1).Summary()),
            TileClass::kFull);
}

TEST(BlockClassificationTest, DiagonalTileIsPartial) {
  const MaskRule rule = MaskRuleFor(LayerConfig{});
  EXPECT_EQ(Classify(rule, Uniform(0, 64, 1).Summary(), Uniform(0, 64, 1).Summary()),
            TileClass::kPartial);
}

TEST(BlockClassificationTest, OtherDocumentTileIsEmpty) {
  const MaskRule rule = MaskRuleFor(LayerConfig{});
  EXPECT_EQ(Classify(rule, Uniform(64, 64, 2).Summary(), Uniform(0, 64, 1).Summary()),
            TileClass::kEmpty);
}

TEST(BlockClassificationTest, TileOutOfWindowIsEmptyUnlessAnImageSpansIt) {
  LayerConfig layer;
  layer.kind = LayerKind::kSliding;
  layer.window = 64;
  const MaskRule rule = MaskRuleFor(layer);
  Tokens q = Uniform(256, 64, 1);
  Tokens k = Uniform(0, 64, 1);
  EXPECT_EQ(Classify(rule, q.Summary(), k.Summary()), TileClass::kEmpty);
  q.vision[0] = 0;
  k.vision[63] = 0;
  EXPECT_EQ(Classify(rule, q.Summary(), k.Summary()), TileClass::kPartial);
  // The same future tile on a causal sliding layer is not skipped either.
  EXPECT_EQ(Classify(rule, k.Summary(), q.Summary()), TileClass::kPartial);
}

TEST(BlockClassificationTest, PaddingTileIsEmpty) {
  const MaskRule rule = MaskRuleFor(LayerConfig{});
  Tokens pad = Uniform(0, 64, 0);
  for (auto& p : pad.padding) p = 1;
  EXPECT_EQ(Classify(rule, Uniform(64, 64, 1).Summary(), pad.Summary()), TileClass::kEmpty);
  EXPECT_EQ(Classify(rule, pad.Summary(), Uniform(0, 64, 1).Summary()), TileClass::kEmpty);
}

}  // namespace
}  // namespace ringattn::kernels
