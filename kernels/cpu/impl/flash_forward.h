#ifndef RINGATTN_KERNELS_CPU_IMPL_FLASH_FORWARD_H_
#define RINGATTN_KERNELS_CPU_IMPL_FLASH_FORWARD_H_

// Flash-attention forward of one query shard against one K/V chunk, with
// online softmax over key tiles and tile skipping from block classification.

#include <cstdint>

#include "kernels/cpu/impl/bf16_gemm.h"
#include "kernels/cpu/impl/flash_common.h"
#include "kernels/cpu/impl/tile_gemm.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

// One row block of online softmax over `width` keys. p_s: [kBq, width]
// masked scaled scores in, unnormalized probabilities out. m, l: [kBq]
// running max and sum. acc: [kBq, Dp] running output, rescaled when a
// row's max grows.
inline void OnlineSoftmax(float* p_s, int64_t width, float* m, float* l, float* acc, int64_t dp) {
  for (int64_t i = 0; i < kBq; ++i) {
    float* row = p_s + i * width;
    VecF mv = Splat(-kInf);
    for (int64_t j = 0; j < width; j += kLanes) mv = Max(mv, Load(row + j));
    const float tile_max = ReduceMax(mv);
    const float m_new = tile_max > m[i] ? tile_max : m[i];
    if (m_new == -kInf) {  // Nothing attended yet: keep the row at zero.
      for (int64_t j = 0; j < width; j += kLanes) Store(row + j, VecF{});
      continue;
    }
    const float alpha = m[i] == -kInf ? 0.0f : __builtin_expf(m[i] - m_new);
    const VecF shift = Splat(m_new);
    VecF sum{};
    for (int64_t j = 0; j < width; j += kLanes) {
      const VecF e = Exp(Load(row + j) - shift);
      Store(row + j, e);
      sum += e;
    }
    l[i] = l[i] * alpha + ReduceSum(sum);
    if (alpha != 1.0f) {
      float* acc_row = acc + i * dp;
      for (int64_t c = 0; c < dp; c += kLanes) Store(acc_row + c, Load(acc_row + c) * alpha);
    }
    m[i] = m_new;
  }
}

// kBf16: bf16 inputs on the matrix units (ws.k_dpairs, ws.v_rpairs), P
// split into two bf16 parts for O += P V; otherwise everything in fp32.
template <bool kBf16>
inline void ForwardTiles(const ForwardParams& params, const TilePlan& plan,
                         const ForwardWorkspace& ws, ThreadPool& pool) {
  const ChunkProblem& p = params.problem;
  const int64_t d = p.shape.head_dim;
  const int64_t dp = plan.head_dim_padded;
  const int64_t lkp = plan.kv_tiles * kBk;
  const int64_t group = p.shape.heads / p.shape.kv_heads;
  const int64_t scratch_size = ForwardScratchPerWorker(dp);

  // K^T and V of every (batch, kv head), packed once and shared by all query
  // heads of the group and all query tiles.
  pool.ParallelFor(p.shape.batch * p.shape.kv_heads, [&](int64_t bk, int worker) {
    const int64_t first = bk * p.shape.kv_len;
    if constexpr (kBf16) {
      PackBf16DimPairs(p.k, first, p.shape.kv_len, d, dp, kBk, ws.k_dpairs + bk * dp * lkp);
      PackBf16RowPairs(p.v, first, p.shape.kv_len, d, dp, kBk, ws.v_rpairs + bk * lkp * dp);
    } else {
      float* row_tmp = ws.scratch + worker * scratch_size;
      PackTransposedTiles(p.shape.dtype, p.k, first, p.shape.kv_len, d, dp, ws.k_t + bk * dp * lkp,
                          row_tmp);
      PackRowTiles(p.shape.dtype, p.v, first, p.shape.kv_len, d, dp, ws.v + bk * lkp * dp, row_tmp);
    }
  });

  // One task per (batch, head, query tile). The last query tiles see the
  // most keys under causal masking, so they are handed out first.
  const int64_t bh_count = p.shape.batch * p.shape.heads;
  pool.ParallelFor(bh_count * plan.q_tiles, [&](int64_t task, int worker) {
    const int64_t qt = plan.q_tiles - 1 - task / bh_count;
    const int64_t bh = task % bh_count;
    const int64_t b = bh / p.shape.heads;
    const int64_t kvh = bh % p.shape.heads / group;
    const int64_t q0 = qt * kBq;
    const int64_t rows = Min(kBq, p.shape.q_len - q0);
    float* out = params.out + (bh * p.shape.q_len + q0) * d;
    float* lse = params.lse + bh * p.shape.q_len + q0;
    const TileSummary& q_sum = plan.q_summaries[b * plan.q_tiles + qt];

    float* q_tile = ws.scratch + worker * scratch_size;  // [kBq, Dp] fp32 or bf16
    float* s = q_tile + kBq * dp;                        // [kBq, <= kKeyRun * kBk]
    float* acc = s + kBq * kKeyRun * kBk;                // [kBq, Dp]
    float* m = acc + kBq * dp;                           // [kBq]
    float* l = m + kBq;                                  // [kBq]
    auto* p16 = reinterpret_cast<uint16_t*>(l + kBq);    // [kBq, <= kKeyRun * kBk] bf16 P hi
    uint16_t* p16_lo = p16 + kBq * kKeyRun * kBk;        // [kBq, <= kKeyRun * kBk] bf16 P lo
    auto* q16 = reinterpret_cast<uint16_t*>(q_tile);
    for (int64_t i = 0; i < kBq * dp; ++i) q_tile[i] = acc[i] = 0.0f;
    for (int64_t i = 0; i < kBq; ++i) {
      m[i] = -kInf;
      l[i] = 0.0f;
    }
    if (q_sum.valid_count > 0) {
      if constexpr (kBf16) {
        PackBf16Rows(p.q, bh * p.shape.q_len + q0, rows, d, dp, q16);
      } else {
        PackRows(p.shape.dtype, p.q, bh * p.shape.q_len + q0, rows, d, dp, q_tile);
      }
    }

    const int64_t bk = b * p.shape.kv_heads + kvh;
    const TileSummary* kv_sums = plan.kv_summaries + b * plan.kv_tiles;
    TileScope tiles(kBf16);
    int64_t kt = 0;
    while (q_sum.valid_count > 0) {
      // The next run of up to kKeyRun consecutive key tiles meeting this
      // query tile: [kt0, kt0 + n).
      while (kt < plan.kv_tiles && Classify(p.mask, q_sum, kv_sums[kt]) == TileClass::kEmpty) ++kt;
      if (kt == plan.kv_tiles) break;
      const int64_t kt0 = kt;
      TileClass cls[kKeyRun];
      int64_t n = 0;
      while (n < kKeyRun && kt < plan.kv_tiles &&
             (cls[n] = Classify(p.mask, q_sum, kv_sums[kt])) != TileClass::kEmpty) {
        ++n;
        ++kt;
      }
      const int64_t width = n * kBk;  // s, p16 and p16_lo: [kBq, width]
      // S = Q K^T over the run, masked and scaled.
      for (int64_t g = 0; g < n; ++g) {
        const int64_t k_at = (bk * lkp + (kt0 + g) * kBk) * dp;
        if constexpr (kBf16) {
          Bf16Gemm<false>(kBq, kBk, dp, q16, dp, ws.k_dpairs + k_at, 2 * kBk, s + g * kBk, width);
        } else {
          PanelGemm<false>(kBq, kBk, dp, q_tile, dp, 1, ws.k_t + k_at, s + g * kBk, width);
        }
        ScaleAndMask(s + g * kBk, width, p.scale, cls[g], p.mask, MakeFrame(p, b, qt, kt0 + g));
      }
      // P = exp(S - m), with the running output rescaled to the new max.
      OnlineSoftmax(s, width, m, l, acc, dp);
      // O += P V.
      const int64_t v_at = (bk * lkp + kt0 * kBk) * dp;
      if constexpr (kBf16) {
        // P as hi + lo (ToBf16Split): one rounding of P is over the
        // tolerance where the terms of P V cancel. The run's V row pairs
        // are one pack of `width` rows.
        ToBf16Split(s, kBq * width, p16, p16_lo);
        Bf16GemmSplit(kBq, dp, width, p16, p16_lo, width, ws.v_rpairs + v_at, 2 * dp, acc, dp);
      } else {
        for (int64_t g = 0; g < n; ++g) {
          PanelGemm<true>(kBq, dp, kBk, s + g * kBk, width, 1, ws.v + v_at + g * kBk * dp, acc, dp);
        }
      }
    }

    // A row that attended nothing gets exactly 0 and -inf (SPEC §2).
    for (int64_t i = 0; i < rows; ++i) {
      if (l[i] > 0.0f) {
        for (int64_t c = 0; c < d; ++c) out[i * d + c] = acc[i * dp + c] / l[i];
        lse[i] = m[i] + __builtin_logf(l[i]);
      } else {
        for (int64_t c = 0; c < d; ++c) out[i * d + c] = 0.0f;
        lse[i] = -kInf;
      }
    }
  });
}

inline void ForwardImpl(const ForwardParams& params, const TilePlan& plan,
                        const ForwardWorkspace& ws, ThreadPool& pool) {
  if (kBf16Matrix && params.problem.shape.dtype == DType::kBF16) {
    ForwardTiles<true>(params, plan, ws, pool);
  } else {
    ForwardTiles<false>(params, plan, ws, pool);
  }
}

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS

#endif  // RINGATTN_KERNELS_CPU_IMPL_FLASH_FORWARD_H_
