// The SIMD helpers: the tile GEMM built here for the baseline instruction
// set, exp and the tile mask of every set the CPU runs through their probes
// (simd_probe.h).
#define RINGATTN_ISA_NS simd_test

#include "kernels/cpu/impl/simd.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/impl/tile_gemm.h"
#include "kernels/cpu/isa.h"
#include "tests/kernels/cpu/impl/simd_probe.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::kernels::cpu::simd_test {
namespace {

// Exp and Exp2 of every instruction set's build the CPU runs.
class IsaProbeTest : public ::testing::TestWithParam<std::string> {
 protected:
  static const probe::SimdProbe& isa_probe() { return probe::SimdProbeFor(*ParseIsa(GetParam())); }
};

// The worst relative error of f against want over [lo, hi] in fine steps.
template <typename Want>
double WorstRelativeError(void (*f)(const float*, int64_t, float*), double lo, double hi,
                          Want want) {
  constexpr int64_t kN = 16;
  double worst = 0.0;
  const auto steps = static_cast<int64_t>((hi - lo) / 0.0137);
  for (int64_t step = 0; step <= steps; ++step) {
    const double x = lo + static_cast<double>(step) * 0.0137;
    float in[kN], out[kN];
    for (int64_t i = 0; i < kN; ++i) in[i] = static_cast<float>(x + i * 1e-3);
    f(in, kN, out);
    for (int64_t i = 0; i < kN; ++i) {
      const double w = want(static_cast<double>(in[i]));
      worst = std::fmax(worst, std::fabs(out[i] - w) / w);
    }
  }
  return worst;
}

// exp(-inf) and 2^-inf must be exactly 0 (masked scores), f(0) exactly 1,
// NaN must stay NaN, and far below the range the result is exactly 0.
void ExpectEdgeValues(void (*f)(const float*, int64_t, float*), float far_below) {
  float in[16], out[16];
  for (int i = 0; i < 16; ++i) {
    in[i] = i % 4 == 0 ? -INFINITY : i % 4 == 1 ? 0.0f : i % 4 == 2 ? NAN : far_below;
  }
  f(in, 16, out);
  for (int i = 0; i < 16; ++i) {
    if (i % 4 == 1) {
      EXPECT_EQ(out[i], 1.0f);
    } else if (i % 4 == 2) {
      EXPECT_TRUE(std::isnan(out[i]));
    } else {
      EXPECT_EQ(out[i], 0.0f) << in[i];
    }
  }
}

TEST_P(IsaProbeTest, ExpIsWithinTwoUlpAndExactlyZeroForMaskedScores) {
  EXPECT_LT(WorstRelativeError(isa_probe().exp, -87.0, 88.0, [](double x) { return std::exp(x); }),
            2.5e-7);  // About 2 ulp of fp32.
  ExpectEdgeValues(isa_probe().exp, -100.0f);
}

TEST_P(IsaProbeTest, Exp2IsWithinTwoUlpAndExactlyZeroForMaskedScores) {
  EXPECT_LT(
      WorstRelativeError(isa_probe().exp2, -125.9, 126.9, [](double x) { return std::exp2(x); }),
      2.5e-7);
  ExpectEdgeValues(isa_probe().exp2, -150.0f);
}

// Random tokens for one side of a tile: documents 0..3 (0 is no document),
// vision groups -1..2 and some padding.
struct RandomTokens {
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  RandomTokens(int64_t n, std::mt19937& rng) : doc(n), vision(n), padding(n) {
    for (int64_t i = 0; i < n; ++i) {
      doc[i] = static_cast<int32_t>(rng() % 4);
      vision[i] = static_cast<int32_t>(rng() % 4) - 1;
      padding[i] = rng() % 7 == 0 ? 1 : 0;
    }
  }
  MetaPtrs meta(int64_t start) const { return {doc.data(), vision.data(), padding.data(), start}; }
};

// MaskScores (and its transposed form) of partial tiles against Allowed()
// token by token, for every kind of rule, rows and columns cut short, and
// tiles whose positions lie 2^31 apart (the scalar path).
TEST_P(IsaProbeTest, PartialTileMaskMatchesAllowedTokenByToken) {
  std::mt19937 rng(7);
  constexpr int64_t kRows = 64, kCols = 64;  // kBq, kBk.
  int64_t checked = 0;
  for (int trial = 0; trial < 320; ++trial) {
    MaskRule rule;
    rule.causal = trial % 2 == 0;
    rule.windowed = trial % 4 >= 2;
    rule.window = rule.windowed ? 1 + static_cast<int64_t>(rng() % 90) : 0;
    rule.vision_bidirectional = rule.windowed && trial % 8 >= 4;
    const RandomTokens q(kRows, rng), kv(kCols, rng);
    probe::ProbeFrame f;
    const int64_t far = trial % 16 == 15 ? (int64_t{1} << 31) : 0;
    f.q_pos = far + static_cast<int64_t>(rng() % 200);
    f.kv_pos = static_cast<int64_t>(rng() % 200);
    f.q_meta = q.meta(f.q_pos);
    f.kv_meta = kv.meta(f.kv_pos);
    f.rows = trial % 3 == 0 ? 1 + static_cast<int64_t>(rng() % kRows) : kRows;
    f.cols = trial % 5 == 0 ? 1 + static_cast<int64_t>(rng() % kCols) : kCols;
    for (bool transposed : {false, true}) {
      std::vector<float> s(kRows * kCols);
      for (float& x : s) x = static_cast<float>(rng() % 1000) * 0.01f - 5.0f;
      const std::vector<float> raw = s;
      isa_probe().mask(s.data(), transposed, TileClass::kPartial, rule, f);
      for (int64_t i = 0; i < kRows; ++i) {
        for (int64_t j = 0; j < kCols; ++j) {
          const int64_t at = transposed ? j * kRows + i : i * kCols + j;
          bool allowed = i < f.rows && j < f.cols;
          if (allowed) {
            const TokenInfo qi{f.q_pos + i, q.doc[i], q.vision[i], q.padding[i] != 0};
            const TokenInfo kj{f.kv_pos + j, kv.doc[j], kv.vision[j], kv.padding[j] != 0};
            allowed = Allowed(rule, qi, kj);
          }
          const float want = allowed ? raw[at] : -INFINITY;
          ASSERT_EQ(s[at], want) << "trial " << trial << " transposed " << transposed << " q " << i
                                 << " k " << j;
          checked += allowed ? 1 : 0;
        }
      }
    }
  }
  EXPECT_GT(checked, 20000);  // The rules let a fair share through.
}

INSTANTIATE_TEST_SUITE_P(Isas, IsaProbeTest, ::testing::ValuesIn(kernels::testing::SupportedIsas()),
                         [](const auto& info) { return info.param; });

TEST(SimdTest, TileGemmMatchesPlainLoopsForBothLayoutsOfA) {
  constexpr int64_t M = 2 * kMr, N = 2 * kNr, K = 37;
  float a[M * K], b[K * N], c[M * N], c_t[M * N];
  for (int64_t i = 0; i < M * K; ++i) a[i] = static_cast<float>((i * 7) % 13) - 6.0f;
  for (int64_t i = 0; i < K * N; ++i) b[i] = static_cast<float>((i * 5) % 11) - 5.0f;
  float a_t[K * M];  // A stored transposed: a_t[k * M + i] = a[i * K + k]
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t k = 0; k < K; ++k) a_t[k * M + i] = a[i * K + k];
  }
  for (float& x : c) x = 1.0f;
  for (float& x : c_t) x = 0.0f;
  TileGemm<true>(M, N, K, a, K, 1, b, N, c, N);
  TileGemm<false>(M, N, K, a_t, 1, M, b, N, c_t, N);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      float want = 0.0f;
      for (int64_t k = 0; k < K; ++k) want += a[i * K + k] * b[k * N + j];
      // Small integers: every partial sum is exact in fp32.
      EXPECT_EQ(c[i * N + j], want + 1.0f);
      EXPECT_EQ(c_t[i * N + j], want);
    }
  }
}

}  // namespace
}  // namespace ringattn::kernels::cpu::simd_test
