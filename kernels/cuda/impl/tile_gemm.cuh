#ifndef RINGATTN_KERNELS_CUDA_IMPL_TILE_GEMM_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_TILE_GEMM_CUH_

// The matrix products of the kernels, on tiles already in shared memory.
// bf16/fp16 run on tensor cores through WMMA 16x16x16 with fp32
// accumulation; fp32 runs on a SIMT path in fp32 (no TF32: fp32 inputs
// promise fp32 accuracy). Both kernels' GEMMs go through here so the choice
// of path and the split of work across warps are made in one place.

#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "kernels/cuda/impl/device_utils.cuh"

namespace ringattn::kernels::cuda::impl {

// c[m, n] (+)= sum_k A[m, k] B[k, n], all operands in shared memory, computed
// by every thread of the block. c: [m, ldc] fp32; A[m, k] is a[m * lda + k],
// or a[k * lda + m] when kATransposed; B[k, n] is b[k * ldb + n], or
// b[n * ldb + k] when kBTransposed. m, n, k are multiples of 16 for 16-bit T
// (and pointers and leading dimensions meet WMMA's alignment, see
// tile_config.h), multiples of 4 for fp32. No barrier inside, so that
// independent GEMMs of one step share the caller's barrier.
template <typename T, bool kATransposed, bool kBTransposed>
__device__ __forceinline__ void CtaGemm(float* c, int ldc, const T* a, int lda, const T* b, int ldb,
                                        int m, int n, int k, bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    // 4x4 register tiles: rows r0..r0+3, columns c0 + j * (n / 4), so that
    // neighbouring threads read neighbouring words of B and C.
    const int tiles_n = n / 4;
    const int tiles = (m / 4) * tiles_n;
    for (int t = threadIdx.x; t < tiles; t += blockDim.x) {
      const int r0 = (t / tiles_n) * 4;
      const int c0 = t % tiles_n;
      float acc[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[i][j] = accumulate ? c[(r0 + i) * ldc + c0 + j * tiles_n] : 0.0f;
        }
      }
      for (int kk = 0; kk < k; ++kk) {
        float av[4];
        float bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          av[i] = kATransposed ? a[kk * lda + r0 + i] : a[(r0 + i) * lda + kk];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = c0 + j * tiles_n;
          bv[j] = kBTransposed ? b[col * ldb + kk] : b[kk * ldb + col];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) c[(r0 + i) * ldc + c0 + j * tiles_n] = acc[i][j];
      }
    }
  } else {
    namespace wmma = nvcuda::wmma;
    using ALayout = std::conditional_t<kATransposed, wmma::col_major, wmma::row_major>;
    using BLayout = std::conditional_t<kBTransposed, wmma::col_major, wmma::row_major>;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    // 32x32 per warp (2x2 fragments) reuses each A and B fragment twice,
    // halving shared-memory reads per MMA, when there is enough of them to
    // keep every warp busy; 16x16 per warp otherwise.
    if (m % 32 == 0 && n % 32 == 0 && (m / 32) * (n / 32) >= kWarps) {
      const int wide_n = n / 32;
      const int wide_tiles = (m / 32) * wide_n;
      for (int t = warp; t < wide_tiles; t += kWarps) {
        const int r0 = (t / wide_n) * 32;
        const int c0 = (t % wide_n) * 32;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float* at = c + (r0 + 16 * i) * ldc + c0 + 16 * j;
            if (accumulate) {
              wmma::load_matrix_sync(acc[i][j], at, ldc, wmma::mem_row_major);
            } else {
              wmma::fill_fragment(acc[i][j], 0.0f);
            }
          }
        }
        for (int kk = 0; kk < k; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa[2];
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb[2];
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int r = r0 + 16 * i;
            wmma::load_matrix_sync(fa[i], kATransposed ? a + kk * lda + r : a + r * lda + kk, lda);
          }
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int col = c0 + 16 * j;
            wmma::load_matrix_sync(fb[j], kBTransposed ? b + col * ldb + kk : b + kk * ldb + col,
                                   ldb);
          }
#pragma unroll
          for (int i = 0; i < 2; ++i) {
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(c + (r0 + 16 * i) * ldc + c0 + 16 * j, acc[i][j], ldc,
                                    wmma::mem_row_major);
          }
        }
      }
      return;
    }
    const int tiles_n = n / 16;
    const int tiles = (m / 16) * tiles_n;
    for (int t = warp; t < tiles; t += kWarps) {
      const int r0 = (t / tiles_n) * 16;
      const int c0 = (t % tiles_n) * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if (accumulate) {
        wmma::load_matrix_sync(acc, c + r0 * ldc + c0, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(acc, 0.0f);
      }
      for (int kk = 0; kk < k; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb;
        wmma::load_matrix_sync(fa, kATransposed ? a + kk * lda + r0 : a + r0 * lda + kk, lda);
        wmma::load_matrix_sync(fb, kBTransposed ? b + c0 * ldb + kk : b + kk * ldb + c0, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(c + r0 * ldc + c0, acc, ldc, wmma::mem_row_major);
    }
  }
}

// A [kRows, kBucket] fp32 accumulator kept in WMMA fragments across a whole
// kernel, for sums that are never rescaled (the backward's dQ, dK, dV): it
// saves the load and store of the accumulator around every tile GEMM. Each
// warp owns rows row0..row0+15 and kFrags 16-column blocks from col0; blocks
// at or past the padded head dim dp are skipped. Only for tensor-core
// inputs, and only when every warp gets whole blocks (kUsable); otherwise
// the caller accumulates in shared memory with CtaGemm.
template <typename T, int kRows, int kBucket>
struct WarpAccumulator {
  static constexpr int kStrips = kRows / 16;
  static constexpr int kStripsOrOne = kStrips > 0 ? kStrips : 1;  // No division by 0 below.
  static constexpr int kGroups = kWarps % kStripsOrOne == 0 ? kWarps / kStripsOrOne : 1;
  static constexpr int kFrags = kBucket / 16 / kGroups;
  static constexpr bool kUsable = !std::is_same_v<T, float> && kRows % 16 == 0 && kStrips > 0 &&
                                  kWarps % kStripsOrOne == 0 &&
                                  (kBucket / 16) % kGroups == 0 && kFrags >= 1 && kFrags <= 4;

  using Fragment = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  Fragment acc[kFrags > 0 ? kFrags : 1];
  int row0 = 0;
  int col0 = 0;

  __device__ __forceinline__ void Init() {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    row0 = (warp % kStrips) * 16;
    col0 = (warp / kStrips) * kFrags * 16;
#pragma unroll
    for (int f = 0; f < kFrags; ++f) nvcuda::wmma::fill_fragment(acc[f], 0.0f);
  }

  // acc[row0.., cols] += sum_kk A[row0.., kk] B[kk, cols] over kk < k, with
  // A[m, kk] = a[m * lda + kk] or, when kATransposed, a[kk * lda + m], and
  // B[kk, n] = b[kk * ldb + n]: a is [kRows, lda] or [k, lda], b is [k, ldb],
  // both in shared memory with WMMA alignment.
  template <bool kATransposed>
  __device__ __forceinline__ void Mma(const T* a, int lda, const T* b, int ldb, int k, int dp) {
    namespace wmma = nvcuda::wmma;
    using ALayout = std::conditional_t<kATransposed, wmma::col_major, wmma::row_major>;
    for (int kk = 0; kk < k; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa;
      wmma::load_matrix_sync(fa, kATransposed ? a + kk * lda + row0 : a + row0 * lda + kk, lda);
#pragma unroll
      for (int f = 0; f < kFrags; ++f) {
        const int col = col0 + 16 * f;
        if (col >= dp) break;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, b + kk * ldb + col, ldb);
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
  }

  // c[row0.., cols] = acc, for the blocks below dp; c: [kRows, ldc] fp32 in
  // shared memory, where the epilogue reads whole rows.
  __device__ __forceinline__ void Store(float* c, int ldc, int dp) const {
#pragma unroll
    for (int f = 0; f < kFrags; ++f) {
      const int col = col0 + 16 * f;
      if (col >= dp) break;
      nvcuda::wmma::store_matrix_sync(c + row0 * ldc + col, acc[f], ldc,
                                      nvcuda::wmma::mem_row_major);
    }
  }
};

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_TILE_GEMM_CUH_
