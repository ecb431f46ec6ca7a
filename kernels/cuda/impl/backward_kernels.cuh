#ifndef RINGATTN_KERNELS_CUDA_IMPL_BACKWARD_KERNELS_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_BACKWARD_KERNELS_CUH_

// Flash-attention backward of one query shard against one K/V chunk on the
// GPU, with the semantics of kernels/cpu/attention_backward.h: P is
// recomputed from the final (merged) log-sum-exp with the forward's mask and
// exponent, and the gradients are added into dq, dk, dv in fp32.
//
// Three kernels: delta = rowsum(dO * O); one block per (key tile,
// batch * kv head) builds that tile's dK and dV over every query head of its
// group and every query tile; one block per (query tile, batch * head)
// builds dQ. Splitting dK/dV from dQ lets each block own what it writes, so
// there are no atomics and results do not depend on scheduling; the price is
// that S and dP are computed twice. Both share one shared-memory layout
// (smem_regions.cuh) and the loaders below.

#include <cuda_runtime.h>

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
#include "kernels/mask.h"

namespace ringattn::kernels::cuda::impl {

// P = exp(scale * S - lse) where the mask allows and dS = P * (dP - delta),
// element-wise over one tile pair; 0 for masked pairs, padded rows and rows
// whose final lse is -inf (they attended nothing and have no gradient).
// s, dp: [kBq, LdScore] fp32; p (null when the caller needs only dS), ds:
// [kBq, LdProb] T; lse, delta, q_tok: [kBq]; k_tok: [kBk].
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

// Query-side inputs of one backward tile into sm: Q and dO rows
// [q0, q0 + rows) of head bh (p.q, p.dout: [B, H, Lq, D]), their mask tokens,
// final lse and delta; rows past `rows` are zero / -inf.
template <typename T, int kBucket, bool kDkDv>
__device__ __forceinline__ void LoadQuerySide(const AttentionParams& p,
                                              const BackwardSmemRegions<T, kBucket, kDkDv>& sm,
                                              int64_t bh, int64_t b, int64_t q0, int rows, int dp) {
  constexpr int kBq = BackwardSmemRegions<T, kBucket, kDkDv>::kTiles.bq;
  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int64_t row0 = bh * sh.q_len + q0;
  LoadTile(sm.q, LdInput(kBucket), static_cast<const T*>(p.q) + row0 * d, rows, d, kBq, dp);
  LoadTile(sm.dout, LdInput(kBucket), static_cast<const T*>(p.dout) + row0 * d, rows, d, kBq, dp);
  LoadTokens(sm.q_tok, p.q_meta, b * sh.q_len + q0, p.q_meta.start + q0, rows, kBq);
  for (int r = threadIdx.x; r < kBq; r += blockDim.x) {
    sm.lse[r] = r < rows ? p.final_lse[row0 + r] : NegInf();
    sm.delta[r] = r < rows ? p.delta[row0 + r] : 0.0f;
  }
}

// Key-side inputs of one backward tile into sm: K and V rows
// [k0, k0 + cols) of kv head bkv (p.k, p.v: [B, Hkv, Lk, D]) and their mask
// tokens.
template <typename T, int kBucket, bool kDkDv>
__device__ __forceinline__ void LoadKeySide(const AttentionParams& p,
                                            const BackwardSmemRegions<T, kBucket, kDkDv>& sm,
                                            int64_t bkv, int64_t b, int64_t k0, int cols, int dp) {
  constexpr int kBk = BackwardSmemRegions<T, kBucket, kDkDv>::kTiles.bk;
  const AttentionShape& sh = p.shape;
  const int d = static_cast<int>(sh.head_dim);
  const int64_t row0 = bkv * sh.kv_len + k0;
  LoadTile(sm.k, LdInput(kBucket), static_cast<const T*>(p.k) + row0 * d, cols, d, kBk, dp);
  LoadTile(sm.v, LdInput(kBucket), static_cast<const T*>(p.v) + row0 * d, cols, d, kBk, dp);
  LoadTokens(sm.k_tok, p.kv_meta, b * sh.kv_len + k0, p.kv_meta.start + k0, cols, kBk);
}

// dK, dV of one key tile, summed over the query heads of its group (GQA) and
// every query tile, added to p.dk, p.dv: [B, Hkv, Lk, D] fp32 (dK scaled by
// p.scale). Needs p.delta: [B, H, Lq] from DeltaKernel.
template <typename T, int kBucket>
__global__ void __launch_bounds__(kThreads) BackwardDkDvKernel(const AttentionParams p) {
  using Smem = BackwardSmemRegions<T, kBucket, /*kDkDv=*/true>;
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
  float* dk_acc = sm.acc;
  float* dv_acc = sm.acc2;

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

  LoadKeySide(p, sm, bkv, b, k0, cols, dp);
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
      LoadQuerySide(p, sm, bh, b, q0, rows, dp);
      __syncthreads();
      // S = Q K^T, dP = dO V^T.
      CtaGemm<T, false, true>(sm.s, kLds, sm.q, kLd, sm.k, kLd, kBq, kBk, dp, false);
      CtaGemm<T, false, true>(sm.dp, kLds, sm.dout, kLd, sm.v, kLd, kBq, kBk, dp, false);
      __syncthreads();
      ProbsAndScoreGrads<T, kBq, kBk>(sm.s, sm.dp, sm.p, sm.ds, sm.lse, sm.delta, sm.q_tok,
                                      sm.k_tok, rows, cols, cls, p.mask, p.scale);
      __syncthreads();
      // dV += P^T dO, dK += dS^T Q (scaled at the end).
      if constexpr (Acc::kUsable) {
        dv_reg.template Mma<true>(sm.p, kLdp, sm.dout, kLd, kBq, dp);
        dk_reg.template Mma<true>(sm.ds, kLdp, sm.q, kLd, kBq, dp);
      } else {
        CtaGemm<T, true, false>(dv_acc, kLdo, sm.p, kLdp, sm.dout, kLd, kBk, dp, kBq, true);
        CtaGemm<T, true, false>(dk_acc, kLdo, sm.ds, kLdp, sm.q, kLd, kBk, dp, kBq, true);
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

// dQ of one query tile over every key tile, added to p.dq: [B, H, Lq, D]
// fp32 (scaled by p.scale). Needs p.delta: [B, H, Lq] from DeltaKernel.
template <typename T, int kBucket>
__global__ void __launch_bounds__(kThreads) BackwardDqKernel(const AttentionParams p) {
  using Smem = BackwardSmemRegions<T, kBucket, /*kDkDv=*/false>;
  constexpr int kBq = Smem::kTiles.bq;
  constexpr int kBk = Smem::kTiles.bk;
  constexpr int kLd = LdInput(kBucket);
  constexpr int kLdo = LdAcc(kBucket);
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  const Smem sm;
  float* dq_acc = sm.acc;

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

  LoadQuerySide(p, sm, bh, b, q0, rows, dp);
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
    LoadKeySide(p, sm, bkv, b, k0, cols, dp);
    __syncthreads();
    CtaGemm<T, false, true>(sm.s, kLds, sm.q, kLd, sm.k, kLd, kBq, kBk, dp, false);
    CtaGemm<T, false, true>(sm.dp, kLds, sm.dout, kLd, sm.v, kLd, kBq, kBk, dp, false);
    __syncthreads();
    ProbsAndScoreGrads<T, kBq, kBk>(sm.s, sm.dp, nullptr, sm.ds, sm.lse, sm.delta, sm.q_tok,
                                    sm.k_tok, rows, cols, cls, p.mask, p.scale);
    __syncthreads();
    // dQ += dS K (scaled at the end).
    if constexpr (Acc::kUsable) {
      dq_reg.template Mma<false>(sm.ds, kLdp, sm.k, kLd, kBk, dp);
    } else {
      CtaGemm<T, false, false>(dq_acc, kLdo, sm.ds, kLdp, sm.k, kLd, kBq, dp, kBk, true);
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

// delta = rowsum(dO * O) in fp32, one warp per row of [B * H * Lq]; p.dout,
// p.fwd_out: [B, H, Lq, D] T, into p.delta: [B, H, Lq]. Both backward
// kernels read it for every tile pair, so it is computed once up front.
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

#endif  // RINGATTN_KERNELS_CUDA_IMPL_BACKWARD_KERNELS_CUH_
