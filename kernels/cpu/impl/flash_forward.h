#ifndef RINGATTN_KERNELS_CPU_IMPL_FLASH_FORWARD_H_
#define RINGATTN_KERNELS_CPU_IMPL_FLASH_FORWARD_H_

// Flash-attention forward of one query shard against one K/V chunk, with
// online softmax over key tiles and tile skipping from block classification.

#include <cstdint>

#include "kernels/cpu/impl/bf16_gemm.h"
#include "kernels/cpu/impl/flash_common.h"
#include "kernels/cpu/impl/tile_gemm.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

// One row block of online softmax over `width` keys. s: [kBq, width]
// masked raw scores (q·k, -inf where masked) in; m, l: [kBq] running max
// of the scores in base 2 (scale * log2(e) * q·k) and running sum of P;
// acc: [kBq, Dp] running output, rescaled when a row's max grows. Base 2
// folds log2(e) into the scale, which saves Exp's reduction by ln 2.
// P = exp(scale * s - m ln 2) = 2^(scale * log2(e) * s - m) goes out
// as fp32 in place, or for kBf16 as two bf16 parts (StoreBf16Split) into
// p_hi, p_lo: [kBq, width], straight from the registers.
//
// In three passes over the rows, so that no row waits on its own chains:
// every row's max (four independent max chains a row), then every row's
// new max and rescale factor a vector of rows at a time, then every row's
// exponentials and sum.
template <bool kBf16>
inline void OnlineSoftmax(float* s, int64_t width, float scale, float* m, float* l, float* acc,
                          int64_t dp, uint16_t* p_hi, uint16_t* p_lo) {
  static_assert(kBq % kLanes == 0);
  const float scale2 = scale * kLog2E;
  const VecF vscale = Splat(scale2);
  float m_new[kBq], alpha[kBq];
  for (int64_t i = 0; i < kBq; ++i) {
    const float* row = s + i * width;
    VecF mv[4] = {Splat(-kInf), Splat(-kInf), Splat(-kInf), Splat(-kInf)};
    for (int64_t j = 0; j < width; j += 4 * kLanes) {
      for (int u = 0; u < 4; ++u) mv[u] = Max(mv[u], Load(row + j + u * kLanes));
    }
    m_new[i] = ReduceMax(Max(Max(mv[0], mv[1]), Max(mv[2], mv[3])));
  }
  for (int64_t i = 0; i < kBq; i += kLanes) {
    const VecF old = Load(m + i);
    const VecF tile = Load(m_new + i) * vscale;  // -inf stays -inf: scale > 0.
    const VecF grown = tile > old ? tile : old;
    // 2^(old - new), 0 where nothing was attended before (old = -inf),
    // never 2^(-inf + inf).
    const VecF factor = Exp2(old - (grown == -kInf ? Splat(0.0f) : grown));
    Store(m_new + i, grown);
    Store(alpha + i, old == -kInf ? Splat(0.0f) : factor);
  }
  for (int64_t i = 0; i < kBq; ++i) {
    float* row = s + i * width;
    if (m_new[i] == -kInf) {  // Nothing attended yet: keep the row at zero.
      for (int64_t j = 0; j < width; j += 2 * kLanes) {
        if constexpr (kBf16) {
          StoreBf16Split(VecF{}, VecF{}, p_hi + i * width + j, p_lo + i * width + j);
        } else {
          Store(row + j, VecF{});
          Store(row + j + kLanes, VecF{});
        }
      }
      continue;
    }
    const VecF shift = Splat(m_new[i]);
    VecF sum[2] = {};
    for (int64_t j = 0; j < width; j += 2 * kLanes) {
      const VecF e0 = Exp2(Load(row + j) * vscale - shift);
      const VecF e1 = Exp2(Load(row + j + kLanes) * vscale - shift);
      if constexpr (kBf16) {
        StoreBf16Split(e0, e1, p_hi + i * width + j, p_lo + i * width + j);
      } else {
        Store(row + j, e0);
        Store(row + j + kLanes, e1);
      }
      sum[0] += e0;
      sum[1] += e1;
    }
    l[i] = l[i] * alpha[i] + ReduceSum(sum[0] + sum[1]);
    if (alpha[i] != 1.0f) {
      float* acc_row = acc + i * dp;
      const VecF a = Splat(alpha[i]);
      for (int64_t c = 0; c < dp; c += kLanes) Store(acc_row + c, Load(acc_row + c) * a);
    }
    m[i] = m_new[i];
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
  const int64_t state_size = ForwardQueryStateSize(dp);

  // K^T and V of every (batch, kv head), packed once and shared by all query
  // heads of the group and all query tiles. Key tiles without a valid
  // token are never read (they meet no query tile), so they are not packed.
  pool.ParallelFor(p.shape.batch * p.shape.kv_heads, [&](int64_t bk, int worker) {
    const TileSummary* kv_sums = plan.kv_summaries + bk / p.shape.kv_heads * plan.kv_tiles;
    ForEachValidTile(kv_sums, plan.kv_tiles, kBk, p.shape.kv_len, [&](int64_t r0, int64_t rows) {
      const int64_t first = bk * p.shape.kv_len + r0;
      const int64_t at = (bk * lkp + r0) * dp;
      if constexpr (kBf16) {
        PackBf16DimPairs(p.k, first, rows, d, dp, kBk, ws.k_dpairs + at);
        PackBf16RowPairs(p.v, first, rows, d, dp, kBk, ws.v_rpairs + at);
      } else {
        float* row_tmp = ws.scratch + worker * scratch_size;
        PackTransposedTiles(p.shape.dtype, p.k, first, rows, d, dp, ws.k_t + at, row_tmp);
        PackRowTiles(p.shape.dtype, p.v, first, rows, d, dp, ws.v + at, row_tmp);
      }
    });
  });

  // One task per (batch, head, group of query tiles). The last query tiles
  // see the most keys under causal masking, so they are handed out first.
  const int64_t bh_count = p.shape.batch * p.shape.heads;
  const int64_t q_group = ForwardQueryGroup(bh_count, plan.q_tiles, pool.num_threads());
  const int64_t q_groups = (plan.q_tiles + q_group - 1) / q_group;
  pool.ParallelFor(bh_count * q_groups, [&](int64_t task, int worker) {
    const int64_t qt_first = (q_groups - 1 - task / bh_count) * q_group;
    const int64_t nq = Min(q_group, plan.q_tiles - qt_first);
    const int64_t bh = task % bh_count;
    const int64_t b = bh / p.shape.heads;
    const int64_t bk = b * p.shape.kv_heads + bh % p.shape.heads / group;
    const TileSummary* q_sums = plan.q_summaries + b * plan.q_tiles;
    const TileSummary* kv_sums = plan.kv_summaries + b * plan.kv_tiles;

    float* s = ws.scratch + worker * scratch_size;                     // [kBq, <= kKeyRun * kBk]
    auto* p16 = reinterpret_cast<uint16_t*>(s + kBq * kKeyRun * kBk);  // the same, bf16 P hi
    uint16_t* p16_lo = p16 + kBq * kKeyRun * kBk;                      // the same, bf16 P lo
    float* states = s + 2 * kBq * kKeyRun * kBk;                       // [nq, state_size]
    // Query tile j of the group: its rows [kBq, Dp] (fp32 or bf16), running
    // output acc [kBq, Dp], max m and sum l [kBq].
    auto q_tile = [&](int64_t j) { return states + j * state_size; };
    auto acc = [&](int64_t j) { return q_tile(j) + kBq * dp; };
    auto m = [&](int64_t j) { return acc(j) + kBq * dp; };
    auto l = [&](int64_t j) { return m(j) + kBq; };
    for (int64_t j = 0; j < nq; ++j) {
      const int64_t q0 = (qt_first + j) * kBq;
      const int64_t rows = Min(kBq, p.shape.q_len - q0);
      for (int64_t i = 0; i < 2 * kBq * dp; ++i) q_tile(j)[i] = 0.0f;
      for (int64_t i = 0; i < kBq; ++i) {
        m(j)[i] = -kInf;
        l(j)[i] = 0.0f;
      }
      if (q_sums[qt_first + j].valid_count == 0) continue;
      if constexpr (kBf16) {
        PackBf16Rows(p.q, bh * p.shape.q_len + q0, rows, d, dp,
                     reinterpret_cast<uint16_t*>(q_tile(j)));
      } else {
        PackRows(p.shape.dtype, p.q, bh * p.shape.q_len + q0, rows, d, dp, q_tile(j));
      }
    }

    TileScope tiles(kBf16);
    for (int64_t kb = 0; kb < plan.kv_tiles; kb += kKeyRun) {
      const int64_t kb_end = Min(kb + kKeyRun, plan.kv_tiles);
      for (int64_t j = 0; j < nq; ++j) {
        const int64_t qt = qt_first + j;
        const TileSummary& q_sum = q_sums[qt];
        if (q_sum.valid_count == 0) continue;
        for (int64_t kt = kb;;) {
          // The next run of consecutive key tiles in this block meeting the
          // query tile: [kt0, kt0 + n).
          while (kt < kb_end && Classify(p.mask, q_sum, kv_sums[kt]) == TileClass::kEmpty) ++kt;
          if (kt == kb_end) break;
          const int64_t kt0 = kt;
          TileClass cls[kKeyRun];
          int64_t n = 0;
          while (kt < kb_end &&
                 (cls[n] = Classify(p.mask, q_sum, kv_sums[kt])) != TileClass::kEmpty) {
            ++n;
            ++kt;
          }
          const int64_t width = n * kBk;  // s, p16 and p16_lo: [kBq, width]
          // S = Q K^T over the run, masked.
          for (int64_t g = 0; g < n; ++g) {
            const int64_t k_at = (bk * lkp + (kt0 + g) * kBk) * dp;
            if constexpr (kBf16) {
              Bf16Gemm<false>(kBq, kBk, dp, reinterpret_cast<const uint16_t*>(q_tile(j)), dp,
                              ws.k_dpairs + k_at, 2 * kBk, s + g * kBk, width);
            } else {
              PanelGemm<false>(kBq, kBk, dp, q_tile(j), dp, 1, ws.k_t + k_at, s + g * kBk, width);
            }
            MaskScores(s + g * kBk, width, cls[g], p.mask, MakeFrame(p, b, qt, kt0 + g));
          }
          // P = exp(scale * S - m), with the running output rescaled to the
          // new max. On the bf16 path P goes out as hi + lo: one rounding of
          // P is over the tolerance where the terms of P V cancel.
          OnlineSoftmax<kBf16>(s, width, p.scale, m(j), l(j), acc(j), dp, p16, p16_lo);
          // O += P V.
          const int64_t v_at = (bk * lkp + kt0 * kBk) * dp;
          if constexpr (kBf16) {
            // The run's V row pairs are one pack of `width` rows.
            Bf16GemmSplit(kBq, dp, width, p16, p16_lo, width, ws.v_rpairs + v_at, 2 * dp, acc(j),
                          dp);
          } else {
            for (int64_t g = 0; g < n; ++g) {
              PanelGemm<true>(kBq, dp, kBk, s + g * kBk, width, 1, ws.v + v_at + g * kBk * dp,
                              acc(j), dp);
            }
          }
        }
      }
    }

    // A row that attended nothing gets exactly 0 and -inf (SPEC §2).
    for (int64_t j = 0; j < nq; ++j) {
      const int64_t q0 = (qt_first + j) * kBq;
      const int64_t rows = Min(kBq, p.shape.q_len - q0);
      float* out = params.out + (bh * p.shape.q_len + q0) * d;
      float* lse = params.lse + bh * p.shape.q_len + q0;
      for (int64_t i = 0; i < rows; ++i) {
        const float li = l(j)[i];
        if (li > 0.0f) {
          for (int64_t c = 0; c < d; ++c) out[i * d + c] = acc(j)[i * dp + c] / li;
          lse[i] = m(j)[i] * kLn2 + __builtin_logf(li);
        } else {
          for (int64_t c = 0; c < d; ++c) out[i * d + c] = 0.0f;
          lse[i] = -kInf;
        }
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
