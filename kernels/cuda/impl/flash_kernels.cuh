#ifndef RINGATTN_KERNELS_CUDA_IMPL_FLASH_KERNELS_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_FLASH_KERNELS_CUH_

// Flash-attention forward and backward of one query shard against one K/V
// chunk on the GPU, with the semantics of kernels/cpu (attention_forward.h,
// attention_backward.h): same mask (Allowed), same tile skipping (Classify),
// same outputs. Included only by the instantiation translation units, one
// per (pass, dtype, head-dim bucket).
//
// Structure: every tile lives in shared memory; all warps of a block
// cooperate on each tile GEMM (CtaGemm), then on the element-wise softmax
// step. bf16/fp16 GEMMs run on tensor cores through WMMA 16x16x16 with fp32
// accumulation; fp32 inputs take a SIMT fp32 path (no TF32). Softmax,
// log-sum-exp and every accumulator are fp32. The running output lives in
// shared memory rather than in fragments because WMMA fragment layouts are
// opaque, and the online softmax must rescale whole rows.
//
// Forward: one block per (query tile, batch * head). Backward: one block per
// (key tile, batch * kv head) builds that tile's dK and dV over every query
// head of its group and every query tile; one block per (query tile,
// batch * head) builds dQ. Each block owns what it writes, so there are no
// atomics and results do not depend on scheduling.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/block_classification.h"
#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/tile_config.h"
#include "kernels/mask.h"

namespace ringattn::kernels::cuda::impl {

constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float NegInf() { return __int_as_float(0xff800000u); }

__device__ __forceinline__ float ToF32(float x) { return x; }
__device__ __forceinline__ float ToF32(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToF32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromF32(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// fp32 inputs promise 1e-5 relative, so they get the accurate expf; the
// tensor-core path rounds P to 16 bits anyway and takes the fast one.
template <typename T>
__device__ __forceinline__ float Exp(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(x);
  } else {
    return __expf(x);
  }
}

__device__ __forceinline__ float WarpMax(float x) {
  for (int offset = 16; offset > 0; offset /= 2) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

__device__ __forceinline__ float WarpSum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ int MinInt(int64_t a, int64_t b) {
  return static_cast<int>(a < b ? a : b);
}

// c[m, n] (+)= sum_k A[m, k] B[k, n], all operands in shared memory, computed
// by every thread of the block. A[m, k] is a[m * lda + k], or a[k * lda + m]
// when kATransposed; B[k, n] is b[k * ldb + n], or b[n * ldb + k] when
// kBTransposed. m, n, k are multiples of 16 for 16-bit T (and pointers and
// leading dimensions meet WMMA's alignment, see tile_config.h), multiples of
// 4 for fp32. No barrier inside: the caller synchronizes.
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

// A [kRows, bucket] fp32 accumulator kept in WMMA fragments across a whole
// kernel, for sums that are never rescaled (the backward's dQ, dK, dV): it
// saves the load and store of the accumulator around every tile GEMM. Each
// warp owns rows row0..row0+15 and kFrags 16-column blocks from col0; blocks
// at or past the padded head dim dp are skipped. Only for tensor-core
// inputs, and only when every warp gets whole blocks (kUsable).
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
  // B[kk, n] = b[kk * ldb + n] (shared memory, WMMA alignment).
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

  // c[row0.., cols] = acc, for the blocks below dp.
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

// dst[r, c] = src[r * d + c] for r < rows, c < d, and 0 for the rest of
// [tile_rows, cols], so padded rows and head-dim columns add nothing to the
// GEMMs. src: [rows, d] in global memory; dst: [tile_rows, ld] shared.
template <typename T>
__device__ __forceinline__ void LoadTile(T* dst, int ld, const T* src, int rows, int d,
                                         int tile_rows, int cols) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vectorized = d % kVec == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  if (vectorized) {
    const int chunks = cols / kVec;
    for (int i = threadIdx.x; i < tile_rows * chunks; i += blockDim.x) {
      const int r = i / chunks;
      const int c = (i % chunks) * kVec;
      uint4 value = make_uint4(0, 0, 0, 0);
      if (r < rows && c < d) value = *reinterpret_cast<const uint4*>(src + int64_t{r} * d + c);
      *reinterpret_cast<uint4*>(dst + r * ld + c) = value;
    }
    return;
  }
  for (int i = threadIdx.x; i < tile_rows * cols; i += blockDim.x) {
    const int r = i / cols;
    const int c = i % cols;
    dst[r * ld + c] = (r < rows && c < d) ? src[int64_t{r} * d + c] : FromF32<T>(0.0f);
  }
}

// Mask inputs of tokens [first, first + count) of one row; the slots up to
// `tile` are padding, which the mask never lets attend.
__device__ __forceinline__ void LoadTokens(TokenInfo* dst, const DeviceMeta& meta, int64_t first,
                                           int64_t pos0, int count, int tile) {
  for (int i = threadIdx.x; i < tile; i += blockDim.x) {
    if (i < count) {
      dst[i] = TokenInfo{pos0 + i, meta.doc[first + i], meta.vision[first + i],
                         meta.padding[first + i] != 0};
    } else {
      dst[i] = TokenInfo{pos0 + i, 0, -1, true};
    }
  }
}

__device__ __forceinline__ bool PairAllowed(TileClass cls, const MaskRule& rule, const TokenInfo& q,
                                            const TokenInfo& k, int j, int cols) {
  return cls == TileClass::kFull ? j < cols : Allowed(rule, q, k);
}

// One key tile of online softmax, one warp per query row. s: [kBq, LdScore]
// raw q·k in, masked scaled scores out; p: [kBq, LdProb] unnormalized
// probabilities exp(s - m_new); o: [kBq, LdAcc] running output, rescaled by
// exp(m_old - m_new), or, when o is null, that factor written to
// alpha_out: [kBq] for the caller to apply; m, l: [kBq] running max and sum
// (l from the fp32 probabilities, before they are rounded to T).
template <typename T, int kBq, int kBk, int kBucket>
__device__ __forceinline__ void OnlineSoftmax(float* s, T* p, float* o, float* alpha_out, float* m,
                                              float* l, const TokenInfo* q_tok,
                                              const TokenInfo* k_tok, int rows, int cols,
                                              TileClass cls, const MaskRule& rule, float scale,
                                              int dp) {
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  constexpr int kLdo = LdAcc(kBucket);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  for (int r = warp; r < kBq; r += kWarps) {
    T* p_row = p + r * kLdp;
    if (r >= rows) {
      for (int j = lane; j < kBk; j += 32) p_row[j] = FromF32<T>(0.0f);
      if (o == nullptr && lane == 0) alpha_out[r] = 1.0f;
      continue;
    }
    float* s_row = s + r * kLds;
    const TokenInfo q = q_tok[r];
    float tile_max = NegInf();
    for (int j = lane; j < kBk; j += 32) {
      const float x = PairAllowed(cls, rule, q, k_tok[j], j, cols) ? s_row[j] * scale : NegInf();
      s_row[j] = x;
      tile_max = fmaxf(tile_max, x);
    }
    tile_max = WarpMax(tile_max);
    const float m_old = m[r];
    const float m_new = fmaxf(m_old, tile_max);
    if (m_new == NegInf()) {  // Nothing attended yet: the row stays at zero.
      for (int j = lane; j < kBk; j += 32) p_row[j] = FromF32<T>(0.0f);
      if (o == nullptr && lane == 0) alpha_out[r] = 1.0f;
      continue;
    }
    const float alpha = m_old == NegInf() ? 0.0f : Exp<T>(m_old - m_new);
    float sum = 0.0f;
    for (int j = lane; j < kBk; j += 32) {
      const float e = Exp<T>(s_row[j] - m_new);  // exp(-inf) = 0 for masked pairs
      sum += e;
      p_row[j] = FromF32<T>(e);
    }
    sum = WarpSum(sum);
    if (o == nullptr) {
      if (lane == 0) alpha_out[r] = alpha;
    } else if (alpha != 1.0f) {
      float* o_row = o + r * kLdo;
      for (int c = lane; c < dp; c += 32) o_row[c] *= alpha;
    }
    __syncwarp();  // Every lane has read m[r] before lane 0 replaces it.
    if (lane == 0) {
      m[r] = m_new;
      l[r] = l[r] * alpha + sum;
    }
  }
}

template <typename T, int kBucket>
__global__ void __launch_bounds__(kThreads) ForwardKernel(const AttentionParams p) {
  constexpr int kEs = sizeof(T);
  constexpr TileShape kTiles = ForwardTiles(kEs, kBucket);
  constexpr int kBq = kTiles.bq;
  constexpr int kBk = kTiles.bk;
  constexpr ForwardSmem kSmem = ForwardSmemLayout(kEs, kBucket, kTiles);
  constexpr int kLd = LdInput(kBucket);
  constexpr int kLdo = LdAcc(kBucket);
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  static_assert(std::is_same_v<T, float> || (kBq % 16 == 0 && kBk % 16 == 0),
                "tensor-core tiles are whole 16x16 fragments");
  static_assert(kBq % 4 == 0 && kBk % 4 == 0, "fp32 tiles are whole 4x4 register tiles");

  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + kSmem.q);
  T* kv_s = reinterpret_cast<T*>(smem + kSmem.kv);
  float* o_s = reinterpret_cast<float*>(smem + kSmem.o);
  float* s_s = reinterpret_cast<float*>(smem + kSmem.s);
  T* p_s = reinterpret_cast<T*>(smem + kSmem.p);
  float* m_s = reinterpret_cast<float*>(smem + kSmem.m);
  float* l_s = reinterpret_cast<float*>(smem + kSmem.l);
  float* alpha_s = reinterpret_cast<float*>(smem + kSmem.alpha);
  TokenInfo* q_tok = reinterpret_cast<TokenInfo*>(smem + kSmem.q_tok);
  TokenInfo* k_tok = reinterpret_cast<TokenInfo*>(smem + kSmem.k_tok);

  // Tensor-core tiles of small head dims keep the running output in WMMA
  // fragments for the whole key loop: each warp owns a 16-row strip and a
  // range of columns, and rescales its own rows. Fragment layouts are opaque,
  // so each thread learns which row each of its accumulator elements holds
  // by loading a matrix whose entries are their row numbers. Larger head
  // dims (and fp32) keep the output in shared memory instead, where rows are
  // addressable.
  constexpr bool kRegisterO =
      !std::is_same_v<T, float> && kBucket <= 128 && kBq == 64 && kWarps % (kBq / 16) == 0;
  constexpr int kRowStrips = kBq / 16;
  constexpr int kColGroups = kRegisterO ? kWarps / kRowStrips : 1;
  constexpr int kFrags = kRegisterO ? kBucket / 16 / kColGroups : 1;
  static_assert(!kRegisterO || (kBucket / 16) % kColGroups == 0, "whole fragments per warp");
  static_assert(!kRegisterO || kBq * kLds >= kWarps * 256, "layout probe fits in the S tile");

  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int dp = (d + 15) / 16 * 16;
  // Under causal masking the last query tiles meet the most keys: they are
  // scheduled first.
  const int64_t qt = p.q_tiles - 1 - blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / sh.heads;
  const int64_t bkv = b * sh.kv_heads + (bh % sh.heads) / p.group;
  const int64_t q0 = qt * kBq;
  const int rows = MinInt(kBq, sh.q_len - q0);
  float* out = p.out + (bh * sh.q_len + q0) * d;
  float* lse = p.lse + bh * sh.q_len + q0;
  const TileSummary q_sum = p.q_summaries[b * p.q_tiles + qt];

  if (q_sum.valid_count == 0) {  // Padding rows: exactly 0 and -inf (SPEC §2).
    for (int i = threadIdx.x; i < rows * d; i += blockDim.x) out[i] = 0.0f;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) lse[i] = NegInf();
    return;
  }

  LoadTile(q_s, kLd, static_cast<const T*>(p.q) + (bh * sh.q_len + q0) * d, rows, d, kBq, dp);
  LoadTokens(q_tok, p.q_meta, b * sh.q_len + q0, p.q_meta.start + q0, rows, kBq);
  for (int i = threadIdx.x; i < kBq * kLdo; i += blockDim.x) o_s[i] = 0.0f;
  for (int i = threadIdx.x; i < kBq; i += blockDim.x) {
    m_s[i] = NegInf();
    l_s[i] = 0.0f;
  }

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int strip_row = (warp % kRowStrips) * 16;           // kRegisterO: first row of the strip
  const int strip_col = (warp / kRowStrips) * kFrags * 16;  // kRegisterO: first column
  using AccFragment = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  AccFragment o_acc[kFrags];
  int row_of[AccFragment::num_elements];
  if constexpr (kRegisterO) {
    namespace wmma = nvcuda::wmma;
    float* probe = s_s + warp * 256;  // Free until the first S = Q K^T.
    for (int i = lane; i < 256; i += 32) probe[i] = static_cast<float>(i / 16);
    __syncwarp();
    AccFragment rows_probe;
    wmma::load_matrix_sync(rows_probe, probe, 16, wmma::mem_row_major);
    for (int e = 0; e < AccFragment::num_elements; ++e) {
      row_of[e] = static_cast<int>(rows_probe.x[e]);
    }
    for (int f = 0; f < kFrags; ++f) wmma::fill_fragment(o_acc[f], 0.0f);
  }

  const T* k_base = static_cast<const T*>(p.k) + bkv * sh.kv_len * d;
  const T* v_base = static_cast<const T*>(p.v) + bkv * sh.kv_len * d;
  for (int64_t kt = 0; kt < p.kv_tiles; ++kt) {
    const TileClass cls = Classify(p.mask, q_sum, p.kv_summaries[b * p.kv_tiles + kt]);
    if (cls == TileClass::kEmpty) continue;
    const int64_t k0 = kt * kBk;
    const int cols = MinInt(kBk, sh.kv_len - k0);
    __syncthreads();  // The previous tile's P V no longer reads kv_s and p_s.
    LoadTile(kv_s, kLd, k_base + k0 * d, cols, d, kBk, dp);
    LoadTokens(k_tok, p.kv_meta, b * sh.kv_len + k0, p.kv_meta.start + k0, cols, kBk);
    __syncthreads();
    // S = Q K^T.
    CtaGemm<T, false, true>(s_s, kLds, q_s, kLd, kv_s, kLd, kBq, kBk, dp, false);
    __syncthreads();
    // V replaces K while the softmax runs: S no longer needs K.
    LoadTile(kv_s, kLd, v_base + k0 * d, cols, d, kBk, dp);
    OnlineSoftmax<T, kBq, kBk, kBucket>(s_s, p_s, kRegisterO ? nullptr : o_s, alpha_s, m_s, l_s,
                                        q_tok, k_tok, rows, cols, cls, p.mask, p.scale, dp);
    __syncthreads();
    // O = O * alpha + P V.
    if constexpr (kRegisterO) {
      namespace wmma = nvcuda::wmma;
      for (int f = 0; f < kFrags; ++f) {
        for (int e = 0; e < AccFragment::num_elements; ++e) {
          o_acc[f].x[e] *= alpha_s[strip_row + row_of[e]];
        }
      }
      for (int kk = 0; kk < kBk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, p_s + strip_row * kLdp + kk, kLdp);
#pragma unroll
        for (int f = 0; f < kFrags; ++f) {
          const int col = strip_col + 16 * f;
          if (col >= dp) break;  // Padding columns of the bucket: nothing to compute.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, kv_s + kk * kLd + col, kLd);
          wmma::mma_sync(o_acc[f], fa, fb, o_acc[f]);
        }
      }
    } else {
      CtaGemm<T, false, false>(o_s, kLdo, p_s, kLdp, kv_s, kLd, kBq, dp, kBk, true);
    }
  }
  if constexpr (kRegisterO) {
    for (int f = 0; f < kFrags; ++f) {
      const int col = strip_col + 16 * f;
      if (col >= dp) break;
      nvcuda::wmma::store_matrix_sync(o_s + strip_row * kLdo + col, o_acc[f], kLdo,
                                      nvcuda::wmma::mem_row_major);
    }
  }
  __syncthreads();

  // A row that attended nothing gets exactly 0 and -inf (SPEC §2).
  for (int i = threadIdx.x; i < rows * d; i += blockDim.x) {
    const int r = i / d;
    const float l = l_s[r];
    out[i] = l > 0.0f ? o_s[r * kLdo + i % d] / l : 0.0f;
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const float l = l_s[r];
    lse[r] = l > 0.0f ? m_s[r] + logf(l) : NegInf();
  }
}

// P = exp(scale * S - lse) where the mask allows and dS = P * (dP - delta),
// element-wise over one tile pair; 0 for masked pairs, padded rows and rows
// whose final lse is -inf (they attended nothing and have no gradient).
// s, dp: [kBq, LdScore] fp32; p (may be null), ds: [kBq, LdProb] T.
template <typename T, int kBq, int kBk>
__device__ __forceinline__ void ProbsAndScoreGrads(const float* s, const float* dp, T* p, T* ds,
                                                   const float* lse, const float* delta,
                                                   const TokenInfo* q_tok, const TokenInfo* k_tok,
                                                   int rows, int cols, TileClass cls,
                                                   const MaskRule& rule, float scale) {
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  for (int i = threadIdx.x; i < kBq * kBk; i += blockDim.x) {
    const int r = i / kBk;
    const int j = i % kBk;
    float prob = 0.0f;
    float grad = 0.0f;
    if (r < rows && lse[r] != NegInf() && PairAllowed(cls, rule, q_tok[r], k_tok[j], j, cols)) {
      prob = Exp<T>(s[r * kLds + j] * scale - lse[r]);
      grad = prob * (dp[r * kLds + j] - delta[r]);
    }
    if (p != nullptr) p[r * kLdp + j] = FromF32<T>(prob);
    ds[r * kLdp + j] = FromF32<T>(grad);
  }
}

// Query-side inputs of one backward tile: Q, dO, mask tokens, final lse and
// delta; rows past `rows` are zero / -inf.
template <typename T, int kBq, int kBucket>
__device__ __forceinline__ void LoadQuerySide(const AttentionParams& p, const BackwardSmem& lay,
                                              unsigned char* smem, int64_t bh, int64_t b,
                                              int64_t q0, int rows, int dp) {
  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int64_t row0 = bh * sh.q_len + q0;
  LoadTile(reinterpret_cast<T*>(smem + lay.q), LdInput(kBucket),
           static_cast<const T*>(p.q) + row0 * d, rows, d, kBq, dp);
  LoadTile(reinterpret_cast<T*>(smem + lay.dout), LdInput(kBucket),
           static_cast<const T*>(p.dout) + row0 * d, rows, d, kBq, dp);
  LoadTokens(reinterpret_cast<TokenInfo*>(smem + lay.q_tok), p.q_meta, b * sh.q_len + q0,
             p.q_meta.start + q0, rows, kBq);
  float* lse = reinterpret_cast<float*>(smem + lay.lse);
  float* delta = reinterpret_cast<float*>(smem + lay.delta);
  for (int r = threadIdx.x; r < kBq; r += blockDim.x) {
    lse[r] = r < rows ? p.final_lse[row0 + r] : NegInf();
    delta[r] = r < rows ? p.delta[row0 + r] : 0.0f;
  }
}

// Key-side inputs of one backward tile: K, V and mask tokens.
template <typename T, int kBk, int kBucket>
__device__ __forceinline__ void LoadKeySide(const AttentionParams& p, const BackwardSmem& lay,
                                            unsigned char* smem, int64_t bkv, int64_t b, int64_t k0,
                                            int cols, int dp) {
  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int64_t row0 = bkv * sh.kv_len + k0;
  LoadTile(reinterpret_cast<T*>(smem + lay.k), LdInput(kBucket),
           static_cast<const T*>(p.k) + row0 * d, cols, d, kBk, dp);
  LoadTile(reinterpret_cast<T*>(smem + lay.v), LdInput(kBucket),
           static_cast<const T*>(p.v) + row0 * d, cols, d, kBk, dp);
  LoadTokens(reinterpret_cast<TokenInfo*>(smem + lay.k_tok), p.kv_meta, b * sh.kv_len + k0,
             p.kv_meta.start + k0, cols, kBk);
}

// dK, dV of one key tile, summed over the query heads of its group (GQA) and
// every query tile, added to dk/dv in fp32 (dK scaled by `scale`).
template <typename T, int kBucket>
__global__ void __launch_bounds__(kThreads) BackwardDkDvKernel(const AttentionParams p) {
  constexpr int kEs = sizeof(T);
  constexpr TileShape kTiles = BackwardTiles(kEs, kBucket);
  constexpr int kBq = kTiles.bq;
  constexpr int kBk = kTiles.bk;
  constexpr BackwardSmem kSmem = BackwardSmemLayout(kEs, kBucket, kTiles, /*dkdv=*/true);
  constexpr int kLd = LdInput(kBucket);
  constexpr int kLdo = LdAcc(kBucket);
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  static_assert(std::is_same_v<T, float> || (kBq % 16 == 0 && kBk % 16 == 0),
                "tensor-core tiles are whole 16x16 fragments");
  static_assert(kBq % 4 == 0 && kBk % 4 == 0, "fp32 tiles are whole 4x4 register tiles");

  extern __shared__ __align__(128) unsigned char smem[];
  const T* q_s = reinterpret_cast<const T*>(smem + kSmem.q);
  const T* dout_s = reinterpret_cast<const T*>(smem + kSmem.dout);
  const T* k_s = reinterpret_cast<const T*>(smem + kSmem.k);
  const T* v_s = reinterpret_cast<const T*>(smem + kSmem.v);
  float* dk_acc = reinterpret_cast<float*>(smem + kSmem.acc);
  float* dv_acc = reinterpret_cast<float*>(smem + kSmem.acc2);
  float* s_s = reinterpret_cast<float*>(smem + kSmem.s);
  float* dp_s = reinterpret_cast<float*>(smem + kSmem.dp);
  T* p_s = reinterpret_cast<T*>(smem + kSmem.p);
  T* ds_s = reinterpret_cast<T*>(smem + kSmem.ds);
  const float* lse_s = reinterpret_cast<const float*>(smem + kSmem.lse);
  const float* delta_s = reinterpret_cast<const float*>(smem + kSmem.delta);
  const TokenInfo* q_tok = reinterpret_cast<const TokenInfo*>(smem + kSmem.q_tok);
  const TokenInfo* k_tok = reinterpret_cast<const TokenInfo*>(smem + kSmem.k_tok);

  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int dp = (d + 15) / 16 * 16;
  const int64_t kt = blockIdx.x;
  const int64_t bkv = blockIdx.y;
  const int64_t b = bkv / sh.kv_heads;
  const int64_t kvh = bkv % sh.kv_heads;
  const TileSummary kv_sum = p.kv_summaries[b * p.kv_tiles + kt];
  if (kv_sum.valid_count == 0) return;
  const int64_t k0 = kt * kBk;
  const int cols = MinInt(kBk, sh.kv_len - k0);

  LoadKeySide<T, kBk, kBucket>(p, kSmem, smem, bkv, b, k0, cols, dp);
  using Acc = WarpAccumulator<T, kBk, kBucket>;
  Acc dk_reg;
  Acc dv_reg;
  if constexpr (Acc::kUsable) {
    dk_reg.Init();
    dv_reg.Init();
  } else {
    for (int i = threadIdx.x; i < kBk * kLdo; i += blockDim.x) dk_acc[i] = dv_acc[i] = 0.0f;
  }

  bool any = false;
  for (int64_t hh = 0; hh < p.group; ++hh) {
    const int64_t bh = b * sh.heads + kvh * p.group + hh;
    for (int64_t qt = 0; qt < p.q_tiles; ++qt) {
      const TileClass cls = Classify(p.mask, p.q_summaries[b * p.q_tiles + qt], kv_sum);
      if (cls == TileClass::kEmpty) continue;
      any = true;
      const int64_t q0 = qt * kBq;
      const int rows = MinInt(kBq, sh.q_len - q0);
      __syncthreads();  // The previous pair's GEMMs no longer read the query side.
      LoadQuerySide<T, kBq, kBucket>(p, kSmem, smem, bh, b, q0, rows, dp);
      __syncthreads();
      // S = Q K^T, dP = dO V^T.
      CtaGemm<T, false, true>(s_s, kLds, q_s, kLd, k_s, kLd, kBq, kBk, dp, false);
      CtaGemm<T, false, true>(dp_s, kLds, dout_s, kLd, v_s, kLd, kBq, kBk, dp, false);
      __syncthreads();
      ProbsAndScoreGrads<T, kBq, kBk>(s_s, dp_s, p_s, ds_s, lse_s, delta_s, q_tok, k_tok, rows,
                                      cols, cls, p.mask, p.scale);
      __syncthreads();
      // dV += P^T dO, dK += dS^T Q (scaled at the end).
      if constexpr (Acc::kUsable) {
        dv_reg.template Mma<true>(p_s, kLdp, dout_s, kLd, kBq, dp);
        dk_reg.template Mma<true>(ds_s, kLdp, q_s, kLd, kBq, dp);
      } else {
        CtaGemm<T, true, false>(dv_acc, kLdo, p_s, kLdp, dout_s, kLd, kBk, dp, kBq, true);
        CtaGemm<T, true, false>(dk_acc, kLdo, ds_s, kLdp, q_s, kLd, kBk, dp, kBq, true);
      }
    }
  }
  if (!any) return;
  if constexpr (Acc::kUsable) {
    dk_reg.Store(dk_acc, kLdo, dp);
    dv_reg.Store(dv_acc, kLdo, dp);
  }
  __syncthreads();
  float* dk = p.dk + (bkv * sh.kv_len + k0) * d;
  float* dv = p.dv + (bkv * sh.kv_len + k0) * d;
  for (int i = threadIdx.x; i < cols * d; i += blockDim.x) {
    const int at = (i / d) * kLdo + i % d;
    dk[i] += p.scale * dk_acc[at];
    dv[i] += dv_acc[at];
  }
}

// dQ of one query tile over every key tile, added to dq in fp32 (scaled).
template <typename T, int kBucket>
__global__ void __launch_bounds__(kThreads) BackwardDqKernel(const AttentionParams p) {
  constexpr int kEs = sizeof(T);
  constexpr TileShape kTiles = BackwardTiles(kEs, kBucket);
  constexpr int kBq = kTiles.bq;
  constexpr int kBk = kTiles.bk;
  constexpr BackwardSmem kSmem = BackwardSmemLayout(kEs, kBucket, kTiles, /*dkdv=*/false);
  constexpr int kLd = LdInput(kBucket);
  constexpr int kLdo = LdAcc(kBucket);
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);

  extern __shared__ __align__(128) unsigned char smem[];
  const T* q_s = reinterpret_cast<const T*>(smem + kSmem.q);
  const T* dout_s = reinterpret_cast<const T*>(smem + kSmem.dout);
  const T* k_s = reinterpret_cast<const T*>(smem + kSmem.k);
  const T* v_s = reinterpret_cast<const T*>(smem + kSmem.v);
  float* dq_acc = reinterpret_cast<float*>(smem + kSmem.acc);
  float* s_s = reinterpret_cast<float*>(smem + kSmem.s);
  float* dp_s = reinterpret_cast<float*>(smem + kSmem.dp);
  T* ds_s = reinterpret_cast<T*>(smem + kSmem.ds);
  const float* lse_s = reinterpret_cast<const float*>(smem + kSmem.lse);
  const float* delta_s = reinterpret_cast<const float*>(smem + kSmem.delta);
  const TokenInfo* q_tok = reinterpret_cast<const TokenInfo*>(smem + kSmem.q_tok);
  const TokenInfo* k_tok = reinterpret_cast<const TokenInfo*>(smem + kSmem.k_tok);

  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int dp = (d + 15) / 16 * 16;
  const int64_t qt = p.q_tiles - 1 - blockIdx.x;  // Late query tiles first.
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / sh.heads;
  const int64_t bkv = b * sh.kv_heads + (bh % sh.heads) / p.group;
  const TileSummary q_sum = p.q_summaries[b * p.q_tiles + qt];
  if (q_sum.valid_count == 0) return;
  const int64_t q0 = qt * kBq;
  const int rows = MinInt(kBq, sh.q_len - q0);

  LoadQuerySide<T, kBq, kBucket>(p, kSmem, smem, bh, b, q0, rows, dp);
  using Acc = WarpAccumulator<T, kBq, kBucket>;
  Acc dq_reg;
  if constexpr (Acc::kUsable) {
    dq_reg.Init();
  } else {
    for (int i = threadIdx.x; i < kBq * kLdo; i += blockDim.x) dq_acc[i] = 0.0f;
  }

  bool any = false;
  for (int64_t kt = 0; kt < p.kv_tiles; ++kt) {
    const TileClass cls = Classify(p.mask, q_sum, p.kv_summaries[b * p.kv_tiles + kt]);
    if (cls == TileClass::kEmpty) continue;
    any = true;
    const int64_t k0 = kt * kBk;
    const int cols = MinInt(kBk, sh.kv_len - k0);
    __syncthreads();  // The previous pair's dQ GEMM no longer reads K and dS.
    LoadKeySide<T, kBk, kBucket>(p, kSmem, smem, bkv, b, k0, cols, dp);
    __syncthreads();
    CtaGemm<T, false, true>(s_s, kLds, q_s, kLd, k_s, kLd, kBq, kBk, dp, false);
    CtaGemm<T, false, true>(dp_s, kLds, dout_s, kLd, v_s, kLd, kBq, kBk, dp, false);
    __syncthreads();
    ProbsAndScoreGrads<T, kBq, kBk>(s_s, dp_s, nullptr, ds_s, lse_s, delta_s, q_tok, k_tok, rows,
                                    cols, cls, p.mask, p.scale);
    __syncthreads();
    // dQ += dS K (scaled at the end).
    if constexpr (Acc::kUsable) {
      dq_reg.template Mma<false>(ds_s, kLdp, k_s, kLd, kBk, dp);
    } else {
      CtaGemm<T, false, false>(dq_acc, kLdo, ds_s, kLdp, k_s, kLd, kBq, dp, kBk, true);
    }
  }
  if (!any) return;
  if constexpr (Acc::kUsable) dq_reg.Store(dq_acc, kLdo, dp);
  __syncthreads();
  float* dq = p.dq + (bh * sh.q_len + q0) * d;
  for (int i = threadIdx.x; i < rows * d; i += blockDim.x) {
    dq[i] += p.scale * dq_acc[(i / d) * kLdo + i % d];
  }
}

// delta = rowsum(dO * O) in fp32, one warp per row of [B * H * Lq].
template <typename T>
__global__ void __launch_bounds__(kThreads) DeltaKernel(const AttentionParams p) {
  const AttentionShape& sh = p.shape;
  const int64_t rows = sh.batch * sh.heads * sh.q_len;
  const int64_t row = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  if (row >= rows) return;  // Whole warps leave together.
  const int d = static_cast<int>(sh.head_dim);
  const T* o = static_cast<const T*>(p.fwd_out) + row * d;
  const T* dout = static_cast<const T*>(p.dout) + row * d;
  float acc = 0.0f;
  for (int c = threadIdx.x % 32; c < d; c += 32) acc += ToF32(dout[c]) * ToF32(o[c]);
  acc = WarpSum(acc);
  if (threadIdx.x % 32 == 0) p.delta[row] = acc;
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_FLASH_KERNELS_CUH_
