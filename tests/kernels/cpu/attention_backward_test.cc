#include "kernels/cpu/attention_backward.h"

#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::kernels::cpu {
namespace {

using testing::AttentionCase;
using testing::NamedCase;

// Forward and backward of the whole mask matrix against the oracle, on the
// best ISA (the forward test covers the others; the kernels share code).
class BackwardOracleTest : public ::testing::TestWithParam<NamedCase> {};

TEST_P(BackwardOracleTest, MatchesDenseOracle) {
  auto backend = testing::MakeCpuBackend();
  testing::ExpectMatchesOracle(GetParam().c, *backend, /*backward=*/true);
}

INSTANTIATE_TEST_SUITE_P(Matrix, BackwardOracleTest, ::testing::ValuesIn(testing::OracleCases()),
                         [](const auto& info) { return info.param.name; });

class BackwardIsaTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BackwardIsaTest, GemmaLikeMatchesOracle) {
  auto backend = testing::MakeCpuBackend(0, GetParam());
  for (const NamedCase& named : testing::OracleCases()) {
    if (named.name.rfind("GemmaLike_", 0) != 0) continue;
    SCOPED_TRACE(named.name);
    testing::ExpectMatchesOracle(named.c, *backend, /*backward=*/true);
  }
}

// The whole mask matrix in bf16 on every instruction set: on those with bf16
// dot products this is the matrix-unit path (P and dS rounded to bf16), a
// different code path from the widened fp32 one the other sets run.
TEST_P(BackwardIsaTest, WholeMatrixInBf16MatchesOracle) {
  auto backend = testing::MakeCpuBackend(0, GetParam());
  for (NamedCase named : testing::OracleCases()) {
    if (named.c.dtype != DType::kF32) continue;
    named.c.dtype = DType::kBF16;
    SCOPED_TRACE(named.name + " in bf16");
    testing::ExpectMatchesOracle(named.c, *backend, /*backward=*/true);
  }
}

// Head dims of 1 and 2 over a dozen keys, in bf16: terms of dS much larger
// than the gradients they sum to (each row of dS sums to zero), where
// rounding dS to bf16 once for the matrix units is over the tolerance on
// some inputs; the kernels' hi + lo split of dS is not.
TEST_P(BackwardIsaTest, CancellingGradientTermsInBf16MatchOracle) {
  auto backend = testing::MakeCpuBackend(0, GetParam());
  for (int64_t d : {1, 2}) {
    for (uint64_t seed = 1; seed <= 24; ++seed) {
      AttentionCase c;
      c.shape = {1, 3, 1, 12, d};
      c.layouts = {testing::SingleDocument(12)};
      c.layer.kind = LayerKind::kSliding;
      c.layer.window = 512;
      c.layer.scale = 0.18f;
      c.dtype = DType::kBF16;
      c.seed = seed;
      SCOPED_TRACE(absl::StrCat("D=", d, " seed ", seed));
      testing::ExpectMatchesOracle(c, *backend, /*backward=*/true);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, BackwardIsaTest, ::testing::ValuesIn(testing::SupportedIsas()),
                         [](const auto& info) { return info.param; });

bool BitEqual(float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// Perturbing every value of document 1 (Q, K, V, dO) must leave document 2's
// outputs and gradients bit-identical: nothing leaks across documents, not
// even through tiles and chunks that hold both.
void ExpectNoLeak(const LayerConfig& layer) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {1, 4, 2, 192, 64};
  reference::RowLayout layout;
  layout.doc_lengths = {100, 92};  // Boundary inside a tile and a chunk.
  layout.images = {{80, 100}, {100, 120}};
  c.layouts = {layout};
  c.layer = layer;
  c.chunks = 2;
  const reference::SyntheticBatch base = testing::MakeBatch(c);
  reference::SyntheticBatch perturbed = base;
  const int64_t S = 192, D = 64;
  auto perturb = [&](std::vector<float>& t, int64_t heads) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < 100; ++i) {
        for (int64_t d = 0; d < D; ++d) t[(h * S + i) * D + d] *= -0.5f;
      }
    }
  };
  perturb(perturbed.q, 4);
  perturb(perturbed.k, 2);
  perturb(perturbed.v, 2);
  perturb(perturbed.dout, 4);
  absl::StatusOr<reference::ChunkedResult> a = reference::RunChunked(base, layer, 2, *backend);
  absl::StatusOr<reference::ChunkedResult> b = reference::RunChunked(perturbed, layer, 2, *backend);
  ASSERT_TRUE(a.ok() && b.ok());
  int64_t changed_in_doc1 = 0;
  auto check = [&](const std::vector<float>& x, const std::vector<float>& y, int64_t heads,
                   int64_t inner, const char* what) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < S; ++i) {
        for (int64_t d = 0; d < inner; ++d) {
          const int64_t at = (h * S + i) * inner + d;
          if (i < 100) {
            changed_in_doc1 += !BitEqual(x[at], y[at]);
          } else {
            ASSERT_TRUE(BitEqual(x[at], y[at]))
                << what << " of document 2 changed at position " << i;
          }
        }
      }
    }
  };
  check(a->out, b->out, 4, D, "O");
  check(a->lse, b->lse, 4, 1, "LSE");
  check(a->dq, b->dq, 4, D, "dQ");
  check(a->dk, b->dk, 2, D, "dK");
  check(a->dv, b->dv, 2, D, "dV");
  EXPECT_GT(changed_in_doc1, 1000) << "the perturbation must reach document 1";
}

TEST(BackwardTest, NoLeakAcrossDocumentsFullLayer) {
  LayerConfig layer;
  layer.scale = 0.125f;
  ExpectNoLeak(layer);
}

TEST(BackwardTest, NoLeakAcrossDocumentsSlidingLayerWithImages) {
  LayerConfig layer;
  layer.kind = LayerKind::kSliding;
  layer.window = 24;
  layer.scale = 0.125f;
  ExpectNoLeak(layer);
}

// Bit-identical results for 1 and 3 threads on every instruction set and
// dtype (the bf16 matrix-unit paths included).
class ThreadCountTest : public ::testing::TestWithParam<std::tuple<std::string, DType>> {};

TEST_P(ThreadCountTest, ResultIsIndependentOfThreadCount) {
  const auto& [isa, dtype] = GetParam();
  AttentionCase c;
  c.shape = {2, 4, 2, 256, 64};
  c.layouts = {reference::GemmaLikeLayout(256)};
  c.layer.kind = LayerKind::kSliding;
  c.layer.window = 40;
  c.dtype = dtype;
  const reference::SyntheticBatch batch = testing::MakeBatch(c);
  auto one = testing::MakeCpuBackend(1, isa);
  auto three = testing::MakeCpuBackend(3, isa);
  absl::StatusOr<reference::ChunkedResult> a = reference::RunChunked(batch, c.layer, 2, *one);
  absl::StatusOr<reference::ChunkedResult> b = reference::RunChunked(batch, c.layer, 2, *three);
  ASSERT_TRUE(a.ok() && b.ok());
  for (auto [x, y] : {std::pair{&a->out, &b->out},
                      {&a->lse, &b->lse},
                      {&a->dq, &b->dq},
                      {&a->dk, &b->dk},
                      {&a->dv, &b->dv}}) {
    ASSERT_EQ(x->size(), y->size());
    EXPECT_EQ(std::memcmp(x->data(), y->data(), x->size() * sizeof(float)), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(IsasAndDtypes, ThreadCountTest,
                         ::testing::Combine(::testing::ValuesIn(testing::SupportedIsas()),
                                            ::testing::Values(DType::kF32, DType::kBF16,
                                                              DType::kF16)),
                         [](const auto& info) {
                           const DType dt = std::get<1>(info.param);
                           return std::get<0>(info.param) + (dt == DType::kF32    ? "_F32"
                                                             : dt == DType::kBF16 ? "_Bf16"
                                                                                  : "_F16");
                         });

// dK/dV of a chunk are summed over every query shard in fp32, so the error
// must not grow with the number of chunks (peers that summed in bf16 saw it
// grow with the ring size).
TEST(BackwardTest, GradientErrorIsFlatInChunkCount) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {1, 4, 2, 256, 64};
  c.layouts = {testing::SingleDocument(256)};
  c.layer.kind = LayerKind::kFull;
  c.layer.scale = 0.125f;
  c.dtype = DType::kBF16;
  const reference::SyntheticBatch batch = testing::MakeBatch(c);
  const reference::DenseProblem problem = reference::ToDenseProblem(batch, c.layer);
  const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
  const reference::DenseGrads want = reference::DenseBackward(problem, dout);
  double err_one = 0.0;
  for (int64_t chunks : {1, 2, 4, 8}) {
    absl::StatusOr<reference::ChunkedResult> r =
        reference::RunChunked(batch, c.layer, chunks, *backend);
    ASSERT_TRUE(r.ok());
    const double err = std::max(reference::Compare(r->dk, want.dk).relative(),
                                reference::Compare(r->dv, want.dv).relative());
    if (chunks == 1) err_one = err;
    EXPECT_LE(err, 1.5 * err_one + 1e-6) << chunks << " chunks";
  }
}

TEST(BackwardTest, AllPaddingChunkHasExactlyZeroGradients) {
  auto backend = testing::MakeCpuBackend();
  AttentionCase c;
  c.shape = {1, 4, 2, 256, 64};
  reference::RowLayout layout;
  layout.doc_lengths = {150, 30};
  c.layouts = {layout};
  c.layer.kind = LayerKind::kFull;
  const reference::SyntheticBatch batch = testing::MakeBatch(c);
  absl::StatusOr<reference::ChunkedResult> r = reference::RunChunked(batch, c.layer, 4, *backend);
  ASSERT_TRUE(r.ok());
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 180; i < 256; ++i) {
      for (int64_t d = 0; d < 64; ++d) {
        ASSERT_EQ(r->dk[(h * 256 + i) * 64 + d], 0.0f);
        ASSERT_EQ(r->dv[(h * 256 + i) * 64 + d], 0.0f);
      }
    }
  }
}

}  // namespace
}  // namespace ringattn::kernels::cpu
