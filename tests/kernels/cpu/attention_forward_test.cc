#include "kernels/cpu/attention_forward.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::kernels::cpu {
namespace {

using testing::AttentionCase;
using testing::NamedCase;

// Forward of the whole mask matrix against the oracle, on every ISA.
class ForwardOracleTest : public ::testing::TestWithParam<std::tuple<std::string, NamedCase>> {};

TEST_P(ForwardOracleTest, MatchesDenseOracle) {
  const auto& [isa, named] = GetParam();
  auto backend = testing::MakeCpuBackend(0, isa);
  testing::ExpectMatchesOracle(named.c, *backend, /*backward=*/false);
}

INSTANTIATE_TEST_SUITE_P(Matrix, ForwardOracleTest,
                         ::testing::Combine(::testing::ValuesIn(testing::SupportedIsas()),
                                            ::testing::ValuesIn(testing::OracleCases())),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param).name;
                         });

// Attention weights made visible: with V[k] = e_k (one-hot by key position,
// D = S), output row q is exactly the softmax weights of query q.
std::vector<float> Weights(AttentionCase c, ChunkBackend& backend) {
  c.shape.head_dim = c.shape.seq_len;
  c.shape.heads = c.shape.kv_heads = 1;
  reference::SyntheticBatch batch = testing::MakeBatch(c);
  const int64_t S = c.shape.seq_len;
  for (int64_t k = 0; k < S; ++k) {
    for (int64_t d = 0; d < S; ++d) batch.v[k * S + d] = d == k ? 1.0f : 0.0f;
  }
  absl::StatusOr<reference::ChunkedResult> r =
      reference::RunChunked(batch, c.layer, c.chunks, backend, /*backward=*/false);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->out : std::vector<float>();
}

TEST(ForwardTest, WindowBoundaryIsStrictAcrossChunks) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {1, 1, 1, 128, 128};
  c.layouts = {testing::SingleDocument(128)};
  c.layer.kind = LayerKind::kSliding;
  c.layer.window = 5;
  c.chunks = 2;
  const std::vector<float> w = Weights(c, *backend);
  ASSERT_EQ(w.size(), 128u * 128u);
  for (int64_t q = 5; q < 128; ++q) {
    EXPECT_GT(w[q * 128 + q - 4], 0.0f) << "q - k = W - 1 must attend, q=" << q;
    EXPECT_EQ(w[q * 128 + q - 5], 0.0f) << "q - k = W must not attend, q=" << q;
    EXPECT_EQ(w[q * 128 + q + (q < 127 ? 1 : 0)], q < 127 ? 0.0f : w[q * 128 + q]);
  }
}

TEST(ForwardTest, ImageBlockSpanningChunksSeesItselfBothWays) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {1, 1, 1, 128, 128};
  reference::RowLayout layout = testing::SingleDocument(128);
  layout.images = {{50, 80}};  // Crosses the chunk boundary at 64.
  c.layouts = {layout};
  c.layer.kind = LayerKind::kSliding;
  c.layer.window = 4;
  c.chunks = 2;
  const std::vector<float> w = Weights(c, *backend);
  ASSERT_EQ(w.size(), 128u * 128u);
  EXPECT_GT(w[52 * 128 + 75], 0.0f);  // Future key in the next chunk.
  EXPECT_GT(w[75 * 128 + 50], 0.0f);  // Far past key, out of window.
  EXPECT_EQ(w[40 * 128 + 41], 0.0f);  // Text stays causal.
  EXPECT_EQ(w[90 * 128 + 60], 0.0f);  // Text after the image: windowed.
  EXPECT_EQ(w[52 * 128 + 81], 0.0f);  // Image token, text key in the future.
}

TEST(ForwardTest, PaddingRowsAreExactlyZeroWithMinusInfLse) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {2, 4, 2, 256, 64};
  c.layouts = {reference::GemmaLikeLayout(256), [] {
                 reference::RowLayout l;
                 l.doc_lengths = {100};  // Chunks 2 and 3 are all padding.
                 return l;
               }()};
  c.layer.kind = LayerKind::kFull;
  c.chunks = 4;
  const reference::SyntheticBatch batch = testing::MakeBatch(c);
  absl::StatusOr<reference::ChunkedResult> r = reference::RunChunked(batch, c.layer, 4, *backend);
  ASSERT_TRUE(r.ok()) << r.status();
  const int64_t S = 256, D = 64, H = 4;
  int64_t padding_rows = 0;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < S; ++i) {
        const int64_t row = (b * H + h) * S + i;
        if (!batch.padding[b * S + i]) continue;
        ++padding_rows;
        EXPECT_EQ(r->lse[row], -std::numeric_limits<float>::infinity());
        for (int64_t d = 0; d < D; ++d) {
          ASSERT_EQ(r->out[row * D + d], 0.0f);
          ASSERT_EQ(r->dq[row * D + d], 0.0f);
        }
      }
    }
  }
  EXPECT_GT(padding_rows, 4 * 150);
  for (const std::vector<float>* t : {&r->out, &r->lse, &r->dq, &r->dk, &r->dv}) {
    for (float x : *t) ASSERT_FALSE(std::isnan(x));
  }
}

TEST(ForwardTest, MergingChunkPartialsEqualsOnePass) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {1, 4, 2, 256, 64};
  c.layouts = {reference::GemmaLikeLayout(256)};
  c.layer.kind = LayerKind::kFull;
  c.layer.scale = 0.125f;
  const reference::SyntheticBatch batch = testing::MakeBatch(c);
  absl::StatusOr<reference::ChunkedResult> one =
      reference::RunChunked(batch, c.layer, 1, *backend, false);
  ASSERT_TRUE(one.ok());
  for (int64_t k : {2, 4, 8}) {
    absl::StatusOr<reference::ChunkedResult> merged =
        reference::RunChunked(batch, c.layer, k, *backend, false);
    ASSERT_TRUE(merged.ok());
    const std::vector<double> want(one->out.begin(), one->out.end());
    const std::vector<double> want_lse(one->lse.begin(), one->lse.end());
    EXPECT_LE(reference::Compare(merged->out, want).relative(), 2e-6) << k << " partials";
    EXPECT_TRUE(reference::Compare(merged->lse, want_lse).Within(1e-6)) << k << " partials";
  }
}

}  // namespace
}  // namespace ringattn::kernels::cpu
