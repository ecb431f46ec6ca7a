// The SIMD helpers, built here for the baseline instruction set; the other
// sets run the same code through the kernel tests.
#define RINGATTN_ISA_NS simd_test

#include "kernels/cpu/impl/simd.h"

#include <cmath>

#include "gtest/gtest.h"
#include "kernels/cpu/impl/tile_gemm.h"

namespace ringattn::kernels::cpu::simd_test {
namespace {

TEST(SimdTest, ExpIsWithinTwoUlpAndExactlyZeroForMaskedScores) {
  double worst = 0.0;
  for (double x = -87.0; x <= 88.0; x += 0.0137) {
    float in[kLanes];
    for (int i = 0; i < kLanes; ++i) in[i] = static_cast<float>(x + i * 1e-3);
    float out[kLanes];
    Store(out, Exp(Load(in)));
    for (int i = 0; i < kLanes; ++i) {
      const double want = std::exp(static_cast<double>(in[i]));
      worst = std::fmax(worst, std::fabs(out[i] - want) / want);
    }
  }
  EXPECT_LT(worst, 2.5e-7);  // About 2 ulp of fp32.
  float masked[kLanes];
  for (float& m : masked) m = -INFINITY;
  float out[kLanes];
  Store(out, Exp(Load(masked)));
  for (float o : out) EXPECT_EQ(o, 0.0f);
  Store(out, Exp(Splat(0.0f)));
  for (float o : out) EXPECT_EQ(o, 1.0f);
}

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
