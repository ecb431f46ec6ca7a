#ifndef RINGATTN_KERNELS_CUDA_IMPL_FORWARD_KERNEL_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_FORWARD_KERNEL_CUH_

// Flash-attention forward of one query shard against one K/V chunk on the
// GPU, with the semantics of kernels/cpu/attention_forward.h: same mask
// (Allowed), same tile skipping (Classify), same outputs (the chunk's
// partial O and log-sum-exp, merged across chunks by the caller).
//
// One block per (query tile, batch * head) walks the key tiles of its kv
// head: S = Q K^T (tile_gemm.cuh), one online-softmax step
// (online_softmax.cuh), O += P V. Every tile lives in shared memory
// (smem_regions.cuh); softmax, log-sum-exp and every accumulator are fp32.
// Each block owns the rows it writes, so there are no atomics.

#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/block_classification.h"
#include "kernels/cuda/attention_params.h"
#include "kernels/cuda/impl/device_utils.cuh"
#include "kernels/cuda/impl/online_softmax.cuh"
#include "kernels/cuda/impl/smem_regions.cuh"
#include "kernels/cuda/impl/tile_gemm.cuh"
#include "kernels/cuda/impl/tile_io.cuh"
#include "kernels/cuda/tile_config.h"

namespace ringattn::kernels::cuda::impl {

// Reads p.q: [B, H, Lq, D], p.k, p.v: [B, Hkv, Lk, D] (T), the tile
// summaries and the token metadata; overwrites p.out: [B, H, Lq, D] and
// p.lse: [B, H, Lq] (fp32) for this block's query tile.
template <typename T, int kBucket>
__global__ void __launch_bounds__(kThreads) ForwardKernel(const AttentionParams p) {
  using Smem = ForwardSmemRegions<T, kBucket>;
  constexpr int kBq = Smem::kTiles.bq;
  constexpr int kBk = Smem::kTiles.bk;
  constexpr int kLd = LdInput(kBucket);
  constexpr int kLdo = LdAcc(kBucket);
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  static_assert(std::is_same_v<T, float> || (kBq % 16 == 0 && kBk % 16 == 0),
                "tensor-core tiles are whole 16x16 fragments");
  static_assert(kBq % 4 == 0 && kBk % 4 == 0, "fp32 tiles are whole 4x4 register tiles");
  const Smem sm;

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

  LoadTile(sm.q, kLd, static_cast<const T*>(p.q) + (bh * sh.q_len + q0) * d, rows, d, kBq, dp);
  LoadTokens(sm.q_tok, p.q_meta, b * sh.q_len + q0, p.q_meta.start + q0, rows, kBq);
  for (int i = threadIdx.x; i < kBq * kLdo; i += blockDim.x) sm.o[i] = 0.0f;
  for (int i = threadIdx.x; i < kBq; i += blockDim.x) {
    sm.m[i] = NegInf();
    sm.l[i] = 0.0f;
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
    float* probe = sm.s + warp * 256;  // Free until the first S = Q K^T.
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
    __syncthreads();  // The previous tile's P V no longer reads kv and p.
    LoadTile(sm.kv, kLd, k_base + k0 * d, cols, d, kBk, dp);
    LoadTokens(sm.k_tok, p.kv_meta, b * sh.kv_len + k0, p.kv_meta.start + k0, cols, kBk);
    __syncthreads();
    // S = Q K^T.
    CtaGemm<T, false, true>(sm.s, kLds, sm.q, kLd, sm.kv, kLd, kBq, kBk, dp, false);
    __syncthreads();
    // V replaces K while the softmax runs: S no longer needs K.
    LoadTile(sm.kv, kLd, v_base + k0 * d, cols, d, kBk, dp);
    OnlineSoftmax<T, kBq, kBk, kBucket>(sm.s, sm.p, kRegisterO ? nullptr : sm.o, sm.alpha, sm.m,
                                        sm.l, sm.q_tok, sm.k_tok, rows, cols, cls, p.mask, p.scale,
                                        dp);
    __syncthreads();
    // O = O * alpha + P V.
    if constexpr (kRegisterO) {
      namespace wmma = nvcuda::wmma;
      for (int f = 0; f < kFrags; ++f) {
        for (int e = 0; e < AccFragment::num_elements; ++e) {
          o_acc[f].x[e] *= sm.alpha[strip_row + row_of[e]];
        }
      }
      for (int kk = 0; kk < kBk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, sm.p + strip_row * kLdp + kk, kLdp);
#pragma unroll
        for (int f = 0; f < kFrags; ++f) {
          const int col = strip_col + 16 * f;
          if (col >= dp) break;  // Padding columns of the bucket: nothing to compute.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, sm.kv + kk * kLd + col, kLd);
          wmma::mma_sync(o_acc[f], fa, fb, o_acc[f]);
        }
      }
    } else {
      CtaGemm<T, false, false>(sm.o, kLdo, sm.p, kLdp, sm.kv, kLd, kBq, dp, kBk, true);
    }
  }
  if constexpr (kRegisterO) {
    for (int f = 0; f < kFrags; ++f) {
      const int col = strip_col + 16 * f;
      if (col >= dp) break;
      nvcuda::wmma::store_matrix_sync(sm.o + strip_row * kLdo + col, o_acc[f], kLdo,
                                      nvcuda::wmma::mem_row_major);
    }
  }
  __syncthreads();

  // A row that attended nothing gets exactly 0 and -inf (SPEC §2).
  for (int i = threadIdx.x; i < rows * d; i += blockDim.x) {
    const int r = i / d;
    const float l = sm.l[r];
    out[i] = l > 0.0f ? sm.o[r * kLdo + i % d] / l : 0.0f;
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const float l = sm.l[r];
    lse[r] = l > 0.0f ? sm.m[r] + logf(l) : NegInf();
  }
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_FORWARD_KERNEL_CUH_
