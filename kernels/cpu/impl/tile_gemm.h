#ifndef RINGATTN_KERNELS_CPU_IMPL_TILE_GEMM_H_
#define RINGATTN_KERNELS_CPU_IMPL_TILE_GEMM_H_

// Register-blocked GEMM on small tiles that live in L1/L2: every product of
// the flash forward and backward (S = Q K^T, O += P V, dV += P^T dO, ...).
// B is read row-contiguous; A is read by broadcasts through two strides, so
// the same code serves A and A^T without copying.

#include <cstdint>

#include "kernels/cpu/impl/simd.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

inline constexpr int kNv = kNr / kLanes;

// c[kMr, kNr] (+)= A[kMr, K] b[K, kNr], A(i, k) = a[i * a_rs + k * a_cs].
template <bool kAccumulate>
inline void MicroKernel(int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                        int64_t ldb, float* c, int64_t ldc) {
  VecF acc[kMr][kNv];
#pragma GCC unroll 16
  for (int i = 0; i < kMr; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) {
      acc[i][v] = kAccumulate ? Load(c + i * ldc + v * kLanes) : VecF{};
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    VecF bv[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) bv[v] = Load(b + k * ldb + v * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < kMr; ++i) {
      const VecF av = Splat(a[i * a_rs + k * a_cs]);
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) acc[i][v] += av * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kMr; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) Store(c + i * ldc + v * kLanes, acc[i][v]);
  }
}

// c[M, N] (+)= A[M, K] b[K, N] with A(i, k) = a[i * a_rs + k * a_cs], b and c
// row-major with leading dims ldb, ldc. M % kMr == 0 and N % kNr == 0: the
// callers pad their tiles so no edge case exists here.
template <bool kAccumulate>
inline void TileGemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                     const float* b, int64_t ldb, float* c, int64_t ldc) {
  // Column panels outermost: one K x kNr panel of b stays in L1 while every
  // row block of A streams past it.
  for (int64_t j = 0; j < N; j += kNr) {
    for (int64_t i = 0; i < M; i += kMr) {
      MicroKernel<kAccumulate>(K, a + i * a_rs, a_rs, a_cs, b + j, ldb, c + i * ldc + j, ldc);
    }
  }
}

// The same with b in column panels: columns [j, j + kNr) of b are the
// contiguous [K, kNr] block at b + (j / kNr) * K * kNr (see PackPanels), so
// the micro-kernel reads B as one dense stream.
template <bool kAccumulate>
inline void PanelGemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                      const float* b, float* c, int64_t ldc) {
  for (int64_t j = 0; j < N; j += kNr) {
    for (int64_t i = 0; i < M; i += kMr) {
      MicroKernel<kAccumulate>(K, a + i * a_rs, a_rs, a_cs, b + j * K, kNr, c + i * ldc + j, ldc);
    }
  }
}

// Row-major src [K, N] (leading dim lds) -> dst in the column panels of
// PanelGemm. N % kNr == 0.
inline void PackPanels(const float* src, int64_t K, int64_t N, int64_t lds, float* dst) {
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = 0; j < N; j += kNr) {
      __builtin_memcpy(dst + j * K + k * kNr, src + k * lds + j, kNr * sizeof(float));
    }
  }
}

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS

#endif  // RINGATTN_KERNELS_CPU_IMPL_TILE_GEMM_H_
