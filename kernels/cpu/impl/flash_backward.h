#ifndef RINGATTN_KERNELS_CPU_IMPL_FLASH_BACKWARD_H_
#define RINGATTN_KERNELS_CPU_IMPL_FLASH_BACKWARD_H_

// Flash-attention backward of one query shard against one K/V chunk, from
// the saved output and log-sum-exp (no second softmax pass).
//
// Two passes, each owning what it writes: one task per key tile builds that
// tile's dK and dV over every query tile; one task per query tile builds its
// dQ over every key tile. S, P and dS are recomputed in both, which costs
// two extra tile GEMMs per pair but needs no atomics and no per-thread dQ
// copies, and makes the result independent of the thread count.

#include <cstdint>

#include "kernels/cpu/impl/bf16_gemm.h"
#include "kernels/cpu/impl/flash_common.h"
#include "kernels/cpu/impl/tile_gemm.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

struct BackwardTile {
  const float* q;      // [kBq, Dp]
  const float* dout;   // [kBq, Dp]
  const float* lse;    // [kBq]
  const float* delta;  // [kBq]
  const float* k_t;    // [Dp, kBk] panel of the key tile
  const float* v_t;    // [Dp, kBk] panel of the key tile
};

// Computes P = exp(scale * S - lse) = 2^(scale * log2(e) * S - lse *
// log2(e)) and dS = P * (dO V^T - delta) for one tile pair: base 2 folds
// log2(e) into the scale, and the scale into the exp pass. s: [kBq, kBk]
// scratch; p, ds: [kBq, kBk] out.
inline void ProbsAndScoreGrads(const BackwardTile& t, int64_t dp, float scale, TileClass cls,
                               const MaskRule& rule, const TileFrame& frame, float* s, float* p,
                               float* ds) {
  PanelGemm<false>(kBq, kBk, dp, t.q, dp, 1, t.k_t, s, kBk);
  MaskScores(s, kBk, cls, rule, frame);
  const VecF scale2 = Splat(scale * kLog2E);
  for (int64_t i = 0; i < kBq; ++i) {
    const float lse = t.lse[i];
    if (lse == -kInf) {  // The row attended nothing: it has no gradient.
      for (int64_t j = 0; j < kBk; j += kLanes) Store(p + i * kBk + j, VecF{});
      continue;
    }
    const VecF shift = Splat(lse * kLog2E);
    for (int64_t j = 0; j < kBk; j += kLanes) {
      Store(p + i * kBk + j, Exp2(Load(s + i * kBk + j) * scale2 - shift));
    }
  }
  PanelGemm<false>(kBq, kBk, dp, t.dout, dp, 1, t.v_t, ds, kBk);  // dP
  for (int64_t i = 0; i < kBq; ++i) {
    const VecF delta = Splat(t.delta[i]);
    for (int64_t j = 0; j < kBk; j += kLanes) {
      const int64_t at = i * kBk + j;
      Store(ds + at, Load(p + at) * (Load(ds + at) - delta));
    }
  }
}

// The tile pair (query tile at packed row `qrow`, key tile kt of kv head
// `bk`) from the packed backward workspace.
inline BackwardTile TileAt(const BackwardWorkspace& ws, int64_t qrow, int64_t bk, int64_t kt,
                           int64_t dp, int64_t lkp) {
  const int64_t panel = (bk * lkp + kt * kBk) * dp;
  return BackwardTile{ws.q + qrow * dp, ws.dout + qrow * dp, ws.lse + qrow,
                      ws.delta + qrow,  ws.k_t + panel,      ws.v_t + panel};
}

// Runs body(b, kvh, bk, kt, kv_summary, worker) on the pool for every key
// tile (b: batch row, kvh: kv head, bk = b * Hkv + kvh, kt: key tile) that
// holds a valid token. Early key tiles meet the most causal queries, so they
// go first.
template <typename Body>
inline void ForEachKeyTile(const ChunkProblem& p, const TilePlan& plan, ThreadPool& pool,
                           Body&& body) {
  const int64_t bk_count = p.shape.batch * p.shape.kv_heads;
  pool.ParallelFor(bk_count * plan.kv_tiles, [&](int64_t task, int worker) {
    const int64_t kt = task / bk_count;
    const int64_t bk = task % bk_count;
    const int64_t b = bk / p.shape.kv_heads;
    const TileSummary& kv_sum = plan.kv_summaries[b * plan.kv_tiles + kt];
    if (kv_sum.valid_count == 0) return;
    body(b, bk % p.shape.kv_heads, bk, kt, kv_sum, worker);
  });
}

// Runs body(b, bh, bk, qt, q_summary, worker) on the pool for every query
// tile (bh = b * H + head, bk its kv head's b * Hkv + kvh, qt: query tile)
// that holds a valid token, late query tiles (the most work) first.
template <typename Body>
inline void ForEachQueryTile(const ChunkProblem& p, const TilePlan& plan, ThreadPool& pool,
                             Body&& body) {
  const int64_t bh_count = p.shape.batch * p.shape.heads;
  const int64_t group = p.shape.heads / p.shape.kv_heads;
  pool.ParallelFor(bh_count * plan.q_tiles, [&](int64_t task, int worker) {
    const int64_t qt = plan.q_tiles - 1 - task / bh_count;
    const int64_t bh = task % bh_count;
    const int64_t b = bh / p.shape.heads;
    const int64_t bk = b * p.shape.kv_heads + bh % p.shape.heads / group;
    const TileSummary& q_sum = plan.q_summaries[b * plan.q_tiles + qt];
    if (q_sum.valid_count == 0) return;
    body(b, bh, bk, qt, q_sum, worker);
  });
}

// Adds one key tile's dK (times the scale) and dV, accumulated over every
// query tile that meets it, into the caller's gradients, which the ring sums
// chunk after chunk. dk_acc, dv_acc: [kBk, Dp]; params.dk, params.dv:
// [B, Hkv, Lk, D]; bk = b * Hkv + kv head.
inline void AddKeyTileGrads(const BackwardParams& params, int64_t bk, int64_t kt, int64_t dp,
                            const float* dk_acc, const float* dv_acc) {
  const AttentionShape& sh = params.problem.shape;
  const float scale = params.problem.scale;
  const int64_t d = sh.head_dim;
  const int64_t k0 = kt * kBk;
  const int64_t cols = Min(kBk, sh.kv_len - k0);
  float* dk = params.dk + (bk * sh.kv_len + k0) * d;
  float* dv = params.dv + (bk * sh.kv_len + k0) * d;
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t c = 0; c < d; ++c) {
      dk[j * d + c] += scale * dk_acc[j * dp + c];
      dv[j * d + c] += dv_acc[j * dp + c];
    }
  }
}

// The same for one query tile's dQ. dq_acc: [kBq, Dp]; params.dq:
// [B, H, Lq, D]; bh = b * H + head.
inline void AddQueryTileGrad(const BackwardParams& params, int64_t bh, int64_t qt, int64_t dp,
                             const float* dq_acc) {
  const AttentionShape& sh = params.problem.shape;
  const float scale = params.problem.scale;
  const int64_t d = sh.head_dim;
  const int64_t q0 = qt * kBq;
  const int64_t rows = Min(kBq, sh.q_len - q0);
  float* dq = params.dq + (bh * sh.q_len + q0) * d;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < d; ++c) dq[i * d + c] += scale * dq_acc[i * dp + c];
  }
}

// Runs body(qt, cls, qrow) for every (query head of kv head `kvh`, query
// tile qt) that meets the key tile summarized by `kv_sum` (cls: how; qrow:
// the query tile's first packed row, (b * H + head) * Lqp + qt * kBq),
// heads outer and tiles inner: the order in which dK and dV are summed.
// Returns whether any did.
template <typename Body>
inline bool ForEachQueryTileMeeting(const ChunkProblem& p, const TilePlan& plan, int64_t b,
                                    int64_t kvh, const TileSummary& kv_sum, Body&& body) {
  const int64_t lqp = plan.q_tiles * kBq;
  const int64_t group = p.shape.heads / p.shape.kv_heads;
  bool any = false;
  for (int64_t hh = 0; hh < group; ++hh) {
    const int64_t bh = b * p.shape.heads + kvh * group + hh;
    for (int64_t qt = 0; qt < plan.q_tiles; ++qt) {
      const TileClass cls = Classify(p.mask, plan.q_summaries[b * plan.q_tiles + qt], kv_sum);
      if (cls == TileClass::kEmpty) continue;
      any = true;
      body(qt, cls, bh * lqp + qt * kBq);
    }
  }
  return any;
}

// Runs key_tile(b, kvh, bk, kt, kv_summary, worker, dq) for every key tile
// that holds a valid token and returns whether dQ is done too.
//
// One pass (ws.dq set, see OnePassBackward): one task per (batch, kv head)
// runs its key tiles in order with dq = ws.dq ([B, H, Lqp, Dp]), where
// key_tile accumulates every query tile's dS K as it goes, then adds the dQ
// of each query tile that met a key tile. It sums every product in the
// order the two passes do, so the result is bit-identical to theirs.
//
// Otherwise pass 1 of two: one task per key tile with dq = nullptr, early
// key tiles (which meet the most causal queries) first.
template <typename KeyTile>
inline bool KeyTilePass(const BackwardParams& params, const TilePlan& plan,
                        const BackwardWorkspace& ws, ThreadPool& pool, KeyTile& key_tile) {
  const ChunkProblem& p = params.problem;
  if (ws.dq == nullptr) {
    ForEachKeyTile(p, plan, pool,
                   [&](int64_t b, int64_t kvh, int64_t bk, int64_t kt, const TileSummary& kv_sum,
                       int worker) { key_tile(b, kvh, bk, kt, kv_sum, worker, nullptr); });
    return false;
  }
  const int64_t dp = plan.head_dim_padded;
  const int64_t lqp = plan.q_tiles * kBq;
  const int64_t group = p.shape.heads / p.shape.kv_heads;
  pool.ParallelFor(p.shape.batch * p.shape.kv_heads, [&](int64_t bk, int worker) {
    const int64_t b = bk / p.shape.kv_heads;
    const int64_t kvh = bk % p.shape.kv_heads;
    for (int64_t kt = 0; kt < plan.kv_tiles; ++kt) {
      const TileSummary& kv_sum = plan.kv_summaries[b * plan.kv_tiles + kt];
      if (kv_sum.valid_count > 0) key_tile(b, kvh, bk, kt, kv_sum, worker, ws.dq);
    }
    for (int64_t hh = 0; hh < group; ++hh) {
      const int64_t bh = b * p.shape.heads + kvh * group + hh;
      for (int64_t qt = 0; qt < plan.q_tiles; ++qt) {
        const TileSummary& q_sum = plan.q_summaries[b * plan.q_tiles + qt];
        bool any = false;
        for (int64_t kt = 0; !any && kt < plan.kv_tiles; ++kt) {
          any = Classify(p.mask, q_sum, plan.kv_summaries[b * plan.kv_tiles + kt]) !=
                TileClass::kEmpty;
        }
        if (any) AddQueryTileGrad(params, bh, qt, dp, ws.dq + (bh * lqp + qt * kBq) * dp);
      }
    }
  });
  return true;
}

inline void BackwardF32(const BackwardParams& params, const TilePlan& plan,
                        const BackwardWorkspace& ws, ThreadPool& pool) {
  const ChunkProblem& p = params.problem;
  const int64_t d = p.shape.head_dim;
  const int64_t dp = plan.head_dim_padded;
  const int64_t lkp = plan.kv_tiles * kBk;
  const int64_t lqp = plan.q_tiles * kBq;
  const int64_t scratch_size = BackwardScratchPerWorker(dp);

  // K, K^T and V^T of every (batch, kv head) in fp32, tiles with a valid
  // token only (ForEachValidTile).
  pool.ParallelFor(p.shape.batch * p.shape.kv_heads, [&](int64_t bk, int worker) {
    float* row_tmp = ws.scratch + worker * scratch_size;
    const TileSummary* kv_sums = plan.kv_summaries + bk / p.shape.kv_heads * plan.kv_tiles;
    ForEachValidTile(kv_sums, plan.kv_tiles, kBk, p.shape.kv_len, [&](int64_t r0, int64_t rows) {
      const int64_t first = bk * p.shape.kv_len + r0;
      const int64_t at = (bk * lkp + r0) * dp;
      PackRowTiles(p.shape.dtype, p.k, first, rows, d, dp, ws.k + at, row_tmp);
      PackTransposedTiles(p.shape.dtype, p.k, first, rows, d, dp, ws.k_t + at, row_tmp);
      PackTransposedTiles(p.shape.dtype, p.v, first, rows, d, dp, ws.v_t + at, row_tmp);
    });
  });

  // Q, dO, lse and delta = rowsum(dO * O) of every (batch, head) row of the
  // query tiles with a valid token; lse is -inf everywhere else.
  pool.ParallelFor(p.shape.batch * p.shape.heads, [&](int64_t bh, int worker) {
    float* o_row = ws.scratch + worker * scratch_size;  // [D]
    for (int64_t i = 0; i < lqp; ++i) ws.lse[bh * lqp + i] = -kInf;
    const TileSummary* q_sums = plan.q_summaries + bh / p.shape.heads * plan.q_tiles;
    ForEachValidTile(q_sums, plan.q_tiles, kBq, p.shape.q_len, [&](int64_t r0, int64_t rows) {
      const int64_t first = bh * p.shape.q_len + r0;
      const int64_t at = (bh * lqp + r0) * dp;
      PackRows(p.shape.dtype, p.q, first, rows, d, dp, ws.q + at);
      PackRows(p.shape.dtype, params.dout, first, rows, d, dp, ws.dout + at);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = bh * lqp + r0 + i;
        ws.lse[row] = params.lse[first + i];
        LoadRow(p.shape.dtype, params.out, first + i, d, o_row);
        const float* dout_row = ws.dout + row * dp;
        float delta = 0.0f;
        for (int64_t c = 0; c < d; ++c) delta += dout_row[c] * o_row[c];
        ws.delta[row] = delta;
      }
    });
  });

  // One key tile's dK, dV, summed over the query heads of the group (GQA)
  // and every query tile; with `dq` ([B, H, Lqp, Dp]) set, also each query
  // tile's dS K, added to dq in key tile order.
  auto key_tile = [&](int64_t b, int64_t kvh, int64_t bk, int64_t kt, const TileSummary& kv_sum,
                      int worker, float* dq) {
    float* s = ws.scratch + worker * scratch_size;  // [kBq, kBk]
    float* prob = s + kBq * kBk;                    // [kBq, kBk]
    float* ds = prob + kBq * kBk;                   // [kBq, kBk]
    float* dk_acc = ds + kBq * kBk;                 // [kBk, Dp]
    float* dv_acc = dk_acc + kBk * dp;              // [kBk, Dp]
    float* q_p = dv_acc + kBk * dp + 2 * dp;        // [kBq, Dp] in column panels
    float* dout_p = q_p + kBq * dp;                 // [kBq, Dp] in column panels
    for (int64_t i = 0; i < kBk * dp; ++i) dk_acc[i] = dv_acc[i] = 0.0f;

    const bool any = ForEachQueryTileMeeting(
        p, plan, b, kvh, kv_sum, [&](int64_t qt, TileClass cls, int64_t qrow) {
          const BackwardTile tile = TileAt(ws, qrow, bk, kt, dp, lkp);
          ProbsAndScoreGrads(tile, dp, p.scale, cls, p.mask, MakeFrame(p, b, qt, kt), s, prob, ds);
          // dV += P^T dO and dK += dS^T Q (scaled below), A read transposed.
          PackPanels(tile.dout, kBq, dp, dp, dout_p);
          PackPanels(tile.q, kBq, dp, dp, q_p);
          PanelGemm<true>(kBk, dp, kBq, prob, 1, kBk, dout_p, dv_acc, dp);
          PanelGemm<true>(kBk, dp, kBq, ds, 1, kBk, q_p, dk_acc, dp);
          if (dq != nullptr) {
            PanelGemm<true>(kBq, dp, kBk, ds, kBk, 1, ws.k + (bk * lkp + kt * kBk) * dp,
                            dq + qrow * dp, dp);
          }
        });
    if (any) AddKeyTileGrads(params, bk, kt, dp, dk_acc, dv_acc);
  };

  if (KeyTilePass(params, plan, ws, pool, key_tile)) return;  // One pass: dQ is done.

  // Pass 2: dQ per (batch, head, query tile); late query tiles first.
  ForEachQueryTile(
      p, plan, pool,
      [&](int64_t b, int64_t bh, int64_t bk, int64_t qt, const TileSummary& q_sum, int worker) {
        float* s = ws.scratch + worker * scratch_size;
        float* prob = s + kBq * kBk;
        float* ds = prob + kBq * kBk;
        float* dq_acc = ds + kBq * kBk;  // [kBq, Dp]
        for (int64_t i = 0; i < kBq * dp; ++i) dq_acc[i] = 0.0f;

        const int64_t qrow = bh * lqp + qt * kBq;
        bool any = false;
        for (int64_t kt = 0; kt < plan.kv_tiles; ++kt) {
          const TileClass cls = Classify(p.mask, q_sum, plan.kv_summaries[b * plan.kv_tiles + kt]);
          if (cls == TileClass::kEmpty) continue;
          any = true;
          const BackwardTile tile = TileAt(ws, qrow, bk, kt, dp, lkp);
          ProbsAndScoreGrads(tile, dp, p.scale, cls, p.mask, MakeFrame(p, b, qt, kt), s, prob, ds);
          // dQ += dS K (scaled below).
          PanelGemm<true>(kBq, dp, kBk, ds, kBk, 1, ws.k + (bk * lkp + kt * kBk) * dp, dq_acc, dp);
        }
        if (any) AddQueryTileGrad(params, bh, qt, dp, dq_acc);
      });
}

// shift[i] = lse[i] * log2(e), or +inf for a row that attended nothing, so
// that 2^(scale * log2(e) * s - shift) is exactly 0 there (never
// 2^(-inf + inf)).
inline void SoftmaxShift(const float* lse, float* shift) {
  for (int64_t i = 0; i < kBq; ++i) shift[i] = lse[i] == -kInf ? kInf : lse[i] * kLog2E;
}

// The bf16 backward: the passes of BackwardF32 with every product on the
// matrix units, P and dS split into two bf16 parts (ToBf16Split) for the
// products that read them. Key tiles work on the transposed tile (S^T =
// K Q^T), so P^T and dS^T come out row-major as the A operands of
// dV += P^T dO and dK += dS^T Q.
inline void BackwardBf16(const BackwardParams& params, const TilePlan& plan,
                         const BackwardWorkspace& ws, ThreadPool& pool) {
  const ChunkProblem& p = params.problem;
  const Bf16BackwardPacks& pk = ws.bf16;
  const int64_t d = p.shape.head_dim;
  const int64_t dp = plan.head_dim_padded;
  const int64_t lkp = plan.kv_tiles * kBk;
  const int64_t lqp = plan.q_tiles * kBq;
  const int64_t scratch_size = BackwardScratchPerWorker(dp);
  const VecF scale2 = Splat(p.scale * kLog2E);  // See ProbsAndScoreGrads.

  // The packs of tiles with a valid token only (ForEachValidTile).
  pool.ParallelFor(p.shape.batch * p.shape.kv_heads, [&](int64_t bk, int) {
    const TileSummary* kv_sums = plan.kv_summaries + bk / p.shape.kv_heads * plan.kv_tiles;
    ForEachValidTile(kv_sums, plan.kv_tiles, kBk, p.shape.kv_len, [&](int64_t r0, int64_t n) {
      const int64_t first = bk * p.shape.kv_len + r0;
      const int64_t at = (bk * lkp + r0) * dp;
      PackBf16Layouts(p.k, first, n, d, dp, kBk, pk.k + at, pk.k_dpairs + at, pk.k_rpairs + at);
      PackBf16Layouts(p.v, first, n, d, dp, kBk, pk.v + at, pk.v_dpairs + at, nullptr);
    });
  });

  pool.ParallelFor(p.shape.batch * p.shape.heads, [&](int64_t bh, int worker) {
    float* o_row = ws.scratch + worker * scratch_size;  // [D]
    float* dout_row = o_row + d;                        // [D]
    for (int64_t i = 0; i < lqp; ++i) ws.lse[bh * lqp + i] = -kInf;
    const TileSummary* q_sums = plan.q_summaries + bh / p.shape.heads * plan.q_tiles;
    ForEachValidTile(q_sums, plan.q_tiles, kBq, p.shape.q_len, [&](int64_t r0, int64_t n) {
      const int64_t first = bh * p.shape.q_len + r0;
      const int64_t at = (bh * lqp + r0) * dp;
      PackBf16Layouts(p.q, first, n, d, dp, kBq, pk.q + at, pk.q_dpairs + at, pk.q_rpairs + at);
      PackBf16Layouts(params.dout, first, n, d, dp, kBq, pk.dout + at, pk.dout_dpairs + at,
                      pk.dout_rpairs + at);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t row = bh * lqp + r0 + i;
        ws.lse[row] = params.lse[first + i];
        LoadRow(p.shape.dtype, params.out, first + i, d, o_row);
        LoadRow(p.shape.dtype, params.dout, first + i, d, dout_row);
        float delta = 0.0f;
        for (int64_t c = 0; c < d; ++c) delta += dout_row[c] * o_row[c];
        ws.delta[row] = delta;
      }
    });
  });

  // One key tile's dK, dV over the group's query heads and every query
  // tile; with `dq` set, also each query tile's dS K (see BackwardF32).
  auto key_tile = [&](int64_t b, int64_t kvh, int64_t bk, int64_t kt, const TileSummary& kv_sum,
                      int worker, float* dq) {
    float* s = ws.scratch + worker * scratch_size;              // [kBk, kBq] S^T, then P^T
    float* dpm = s + kBq * kBk;                                 // [kBk, kBq] dP^T, then dS^T
    auto* hi16 = reinterpret_cast<uint16_t*>(dpm + kBq * kBk);  // [kBk, kBq] bf16
    uint16_t* lo16 = hi16 + kBq * kBk;                          // [kBk, kBq] bf16
    float* dk_acc = dpm + 2 * kBq * kBk;                        // [kBk, Dp]
    float* dv_acc = dk_acc + kBk * dp;                          // [kBk, Dp]
    float* shift = dv_acc + kBk * dp;                           // [kBq]
    for (int64_t i = 0; i < kBk * dp; ++i) dk_acc[i] = dv_acc[i] = 0.0f;

    const int64_t kv_at = (bk * lkp + kt * kBk) * dp;
    TileScope tiles(true);
    const bool any = ForEachQueryTileMeeting(
        p, plan, b, kvh, kv_sum, [&](int64_t qt, TileClass cls, int64_t qrow) {
          const int64_t q_at = qrow * dp;
          Bf16Gemm<false>(kBk, kBq, dp, pk.k + kv_at, dp, pk.q_dpairs + q_at, 2 * kBq, s, kBq);
          MaskScoresTransposed(s, cls, p.mask, MakeFrame(p, b, qt, kt));
          Bf16Gemm<false>(kBk, kBq, dp, pk.v + kv_at, dp, pk.dout_dpairs + q_at, 2 * kBq, dpm, kBq);
          SoftmaxShift(ws.lse + qrow, shift);
          const float* delta = ws.delta + qrow;
          for (int64_t j = 0; j < kBk; ++j) {
            for (int64_t i = 0; i < kBq; i += kLanes) {
              const int64_t at = j * kBq + i;
              const VecF prob = Exp2(Load(s + at) * scale2 - Load(shift + i));
              Store(s + at, prob);
              Store(dpm + at, prob * (Load(dpm + at) - Load(delta + i)));
            }
          }
          // P^T, then dS^T, as hi + lo in the same two buffers: see
          // ToBf16Split.
          ToBf16Split(s, kBq * kBk, hi16, lo16);
          Bf16GemmSplit(kBk, dp, kBq, hi16, lo16, kBq, pk.dout_rpairs + q_at, 2 * dp, dv_acc, dp);
          ToBf16Split(dpm, kBq * kBk, hi16, lo16);
          Bf16GemmSplit(kBk, dp, kBq, hi16, lo16, kBq, pk.q_rpairs + q_at, 2 * dp, dk_acc, dp);
          if (dq != nullptr) {
            // dQ += dS K: dS^T transposed into s (P^T is spent), then split.
            for (int64_t i = 0; i < kBq; ++i) {
              for (int64_t j = 0; j < kBk; ++j) s[i * kBk + j] = dpm[j * kBq + i];
            }
            ToBf16Split(s, kBq * kBk, hi16, lo16);
            Bf16GemmSplit(kBq, dp, kBk, hi16, lo16, kBk, pk.k_rpairs + kv_at, 2 * dp, dq + q_at,
                          dp);
          }
        });
    if (any) AddKeyTileGrads(params, bk, kt, dp, dk_acc, dv_acc);
  };

  if (KeyTilePass(params, plan, ws, pool, key_tile)) return;  // One pass: dQ is done.

  // Pass 2: dQ per (batch, head, query tile); late query tiles first.
  ForEachQueryTile(
      p, plan, pool,
      [&](int64_t b, int64_t bh, int64_t bk, int64_t qt, const TileSummary& q_sum, int worker) {
        float* s = ws.scratch + worker * scratch_size;              // [kBq, kBk]
        float* dpm = s + kBq * kBk;                                 // [kBq, kBk]
        auto* ds16 = reinterpret_cast<uint16_t*>(dpm + kBq * kBk);  // [kBq, kBk] bf16 dS hi
        uint16_t* ds16_lo = ds16 + kBq * kBk;                       // [kBq, kBk] bf16 dS lo
        float* dq_acc = dpm + 2 * kBq * kBk;                        // [kBq, Dp]
        float* shift = dq_acc + 2 * kBk * dp;                       // [kBq]
        for (int64_t i = 0; i < kBq * dp; ++i) dq_acc[i] = 0.0f;

        const int64_t qrow = bh * lqp + qt * kBq;
        const int64_t q_at = qrow * dp;
        SoftmaxShift(ws.lse + qrow, shift);
        const float* delta = ws.delta + qrow;
        TileScope tiles(true);
        bool any = false;
        for (int64_t kt = 0; kt < plan.kv_tiles; ++kt) {
          const TileClass cls = Classify(p.mask, q_sum, plan.kv_summaries[b * plan.kv_tiles + kt]);
          if (cls == TileClass::kEmpty) continue;
          any = true;
          const int64_t kv_at = (bk * lkp + kt * kBk) * dp;
          Bf16Gemm<false>(kBq, kBk, dp, pk.q + q_at, dp, pk.k_dpairs + kv_at, 2 * kBk, s, kBk);
          MaskScores(s, kBk, cls, p.mask, MakeFrame(p, b, qt, kt));
          Bf16Gemm<false>(kBq, kBk, dp, pk.dout + q_at, dp, pk.v_dpairs + kv_at, 2 * kBk, dpm, kBk);
          for (int64_t i = 0; i < kBq; ++i) {
            const VecF row_shift = Splat(shift[i]);
            const VecF row_delta = Splat(delta[i]);
            for (int64_t j = 0; j < kBk; j += kLanes) {
              const int64_t at = i * kBk + j;
              const VecF prob = Exp2(Load(s + at) * scale2 - row_shift);
              Store(dpm + at, prob * (Load(dpm + at) - row_delta));
            }
          }
          ToBf16Split(dpm, kBq * kBk, ds16, ds16_lo);
          Bf16GemmSplit(kBq, dp, kBk, ds16, ds16_lo, kBk, pk.k_rpairs + kv_at, 2 * dp, dq_acc, dp);
        }
        if (any) AddQueryTileGrad(params, bh, qt, dp, dq_acc);
      });
}

inline void BackwardImpl(const BackwardParams& params, const TilePlan& plan,
                         const BackwardWorkspace& ws, ThreadPool& pool) {
  if (kBf16Matrix && params.problem.shape.dtype == DType::kBF16) {
    BackwardBf16(params, plan, ws, pool);
  } else {
    BackwardF32(params, plan, ws, pool);
  }
}

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS

#endif  // RINGATTN_KERNELS_CPU_IMPL_FLASH_BACKWARD_H_
