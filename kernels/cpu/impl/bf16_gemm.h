#ifndef RINGATTN_KERNELS_CPU_IMPL_BF16_GEMM_H_
#define RINGATTN_KERNELS_CPU_IMPL_BF16_GEMM_H_

// Tile GEMMs of bf16 operands with fp32 accumulation on the matrix units:
// AMX tiles where the build has them, AVX512-BF16 dot products (vdpbf16ps)
// otherwise. Only the instruction sets with bf16 dot products define
// kBf16Matrix; the others widen bf16 to fp32 and never include the rest.
//
// B is a "pairs" pack (isa_dispatch.h): B(k, n) at b[(k / 2) * ldb + 2 * n +
// k % 2], which is the layout both instruction families read.

#include <cstdint>

#include "kernels/cpu/impl/simd.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

#if defined(__AVX512BF16__)
inline constexpr bool kBf16Matrix = true;
#else
inline constexpr bool kBf16Matrix = false;
#endif

#if defined(__AVX512BF16__)

// Products are built from 32 x 32 blocks: M, N and K must be multiples of 32.
inline constexpr int64_t kBf16Block = 32;

// fp32 -> bf16, round to nearest even, n % 32 == 0.
inline void ToBf16(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; i += 32) {
    const __m512bh pair =
        _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, reinterpret_cast<__m512i>(pair));
  }
}

// 32 fp32 values (x0: the first 16, x1: the next) -> bf16 hi + lo with hi +
// lo equal to x within 2^-16 of it: hi is x cut to bf16 (exact as bf16, so
// x - hi is exact), lo the residual rounded to nearest even. For operands
// whose terms cancel (dS, whose rows sum to zero): one bf16 rounding of
// such a term can be larger than the sum it belongs to; the two products of
// hi and lo are not.
inline void StoreBf16Split(__m512 x0, __m512 x1, uint16_t* hi, uint16_t* lo) {
  const __m512i keep = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const __m512 h0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), keep));
  const __m512 h1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), keep));
  _mm512_storeu_si512(hi, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(h1, h0)));
  _mm512_storeu_si512(lo, reinterpret_cast<__m512i>(
                              _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0))));
}

// StoreBf16Split of src[0, n), n % 32 == 0.
inline void ToBf16Split(const float* src, int64_t n, uint16_t* hi, uint16_t* lo) {
  for (int64_t i = 0; i < n; i += 32) {
    StoreBf16Split(_mm512_loadu_ps(src + i), _mm512_loadu_ps(src + i + 16), hi + i, lo + i);
  }
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)

// Every tile is 16 rows of 64 bytes (16 fp32 or 32 bf16): tiles 0-3 hold a
// 32 x 32 block of C, 4-5 two row blocks of A, 6-7 two column blocks of B.
// The configuration is per thread: each task sets it up (TileScope) and
// releases the tile state when done, so a descheduled worker does not carry
// 8 KiB of tile data through every context switch.
class TileScope {
 public:
  // Inactive: does nothing (a task that runs no bf16 product).
  explicit TileScope(bool active) : active_(active) {
    if (!active) return;
    struct alignas(64) Config {
      unsigned char bytes[64];
    } config = {};
    config.bytes[0] = 1;  // Palette 1.
    for (int t = 0; t < 8; ++t) {
      config.bytes[16 + 2 * t] = 64;  // Bytes per row.
      config.bytes[48 + t] = 16;      // Rows.
    }
    // Not _tile_loadconfig: GCC 12's declares a read of 8 bytes only, so
    // the stores of the row and column sizes above are dropped as dead and
    // the first tile instruction faults. This operand is all 64 bytes.
    __asm__ volatile("ldtilecfg %0" : : "m"(config));
  }
  ~TileScope() {
    if (active_) _tile_release();
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  bool active_;
};

// c[M, N] (+)= (a + a2)[M, K] B[K, N]; a and a2 row-major bf16 (lda
// elements; a2 null for a single operand), B a pairs pack (ldb elements per
// pair row), c row-major fp32 (ldc). Needs a live TileScope on this thread.
// The two parts of a split operand (ToBf16Split) share each load of B and
// of C, which K = 64 does not amortize on its own.
template <bool kAccumulate>
inline void Bf16GemmImpl(int64_t M, int64_t N, int64_t K, const uint16_t* a, const uint16_t* a2,
                         int64_t lda, const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  const int64_t a_stride = lda * 2, b_stride = ldb * 2, c_stride = ldc * 4;
  for (int64_t i = 0; i < M; i += 32) {
    for (int64_t j = 0; j < N; j += 32) {
      float* c0 = c + i * ldc + j;
      if (kAccumulate) {
        _tile_loadd(0, c0, c_stride);
        _tile_loadd(1, c0 + 16, c_stride);
        _tile_loadd(2, c0 + 16 * ldc, c_stride);
        _tile_loadd(3, c0 + 16 * ldc + 16, c_stride);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t k = 0; k < K; k += 32) {
        const uint16_t* b0 = b + (k / 2) * ldb + 2 * j;
        _tile_loadd(6, b0, b_stride);
        _tile_loadd(7, b0 + 32, b_stride);
        for (const uint16_t* part : {a, a2}) {
          if (part == nullptr) break;
          const uint16_t* a0 = part + i * lda + k;
          _tile_loadd(4, a0, a_stride);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_loadd(5, a0 + 16 * lda, a_stride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c0, c_stride);
      _tile_stored(1, c0 + 16, c_stride);
      _tile_stored(2, c0 + 16 * ldc, c_stride);
      _tile_stored(3, c0 + 16 * ldc + 16, c_stride);
    }
  }
}

#else  // AVX512-BF16 without AMX.

class TileScope {
 public:
  explicit TileScope(bool) {}
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// The same product on vdpbf16ps: an 8 x 32 register block of C (16
// accumulators), each step broadcasting one pair of each A part and reading
// one pair row of B.
template <bool kAccumulate>
inline void Bf16GemmImpl(int64_t M, int64_t N, int64_t K, const uint16_t* a, const uint16_t* a2,
                         int64_t lda, const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  constexpr int kRows = 8;
  const int parts = a2 == nullptr ? 1 : 2;
  for (int64_t j = 0; j < N; j += 32) {
    for (int64_t i = 0; i < M; i += kRows) {
      __m512 acc[kRows][2];
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        acc[r][0] = kAccumulate ? _mm512_loadu_ps(c + (i + r) * ldc + j) : _mm512_setzero_ps();
        acc[r][1] = kAccumulate ? _mm512_loadu_ps(c + (i + r) * ldc + j + 16) : _mm512_setzero_ps();
      }
      for (int64_t k = 0; k < K; k += 2) {
        const uint16_t* brow = b + (k / 2) * ldb + 2 * j;
        const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(brow));
        const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(brow + 32));
        for (int part = 0; part < parts; ++part) {
          const uint16_t* ap = (part == 0 ? a : a2) + i * lda + k;
#pragma GCC unroll 8
          for (int r = 0; r < kRows; ++r) {
            int32_t pair;
            __builtin_memcpy(&pair, ap + r * lda, sizeof(pair));
            const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        _mm512_storeu_ps(c + (i + r) * ldc + j, acc[r][0]);
        _mm512_storeu_ps(c + (i + r) * ldc + j + 16, acc[r][1]);
      }
    }
  }
}

#endif  // AMX

// c[M, N] (+)= a[M, K] B[K, N]: see Bf16GemmImpl.
template <bool kAccumulate>
inline void Bf16Gemm(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda,
                     const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  Bf16GemmImpl<kAccumulate>(M, N, K, a, nullptr, lda, b, ldb, c, ldc);
}

// c[M, N] += (hi + lo)[M, K] B[K, N] for an operand split by ToBf16Split.
inline void Bf16GemmSplit(int64_t M, int64_t N, int64_t K, const uint16_t* hi, const uint16_t* lo,
                          int64_t lda, const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  Bf16GemmImpl<true>(M, N, K, hi, lo, lda, b, ldb, c, ldc);
}

#else  // No bf16 dot products: never called (kBf16Matrix is false), declared
       // so the flash code can name them under `if constexpr`.

inline constexpr int64_t kBf16Block = 32;

class TileScope {
 public:
  explicit TileScope(bool) {}
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

inline void ToBf16(const float*, int64_t, uint16_t*) { __builtin_trap(); }
inline void ToBf16Split(const float*, int64_t, uint16_t*, uint16_t*) { __builtin_trap(); }
inline void StoreBf16Split(VecF, VecF, uint16_t*, uint16_t*) { __builtin_trap(); }

template <bool kAccumulate>
inline void Bf16Gemm(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t,
                     float*, int64_t) {
  __builtin_trap();
}
inline void Bf16GemmSplit(int64_t, int64_t, int64_t, const uint16_t*, const uint16_t*, int64_t,
                          const uint16_t*, int64_t, float*, int64_t) {
  __builtin_trap();
}

#endif  // __AVX512BF16__

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS

#endif  // RINGATTN_KERNELS_CPU_IMPL_BF16_GEMM_H_
