#ifndef RINGATTN_KERNELS_CPU_IMPL_FLASH_COMMON_H_
#define RINGATTN_KERNELS_CPU_IMPL_FLASH_COMMON_H_

// Pieces shared by the flash forward and backward: packing inputs to padded
// fp32 tiles and turning raw score tiles into masked, scaled scores.

#include <cstdint>

#include "kernels/block_classification.h"
#include "kernels/chunk_params.h"
#include "kernels/convert.h"
#include "kernels/cpu/impl/isa_dispatch.h"
#include "kernels/cpu/impl/simd.h"
#include "kernels/mask.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

static_assert(kBq % kMr == 0 && kBk % kMr == 0, "tiles must hold whole row blocks");
static_assert(kBk % kNr == 0 && kHeadDimAlign % kNr == 0, "columns must hold whole panels");
static_assert(kBk % kLanes == 0, "score rows must hold whole vectors");

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

// Row `row` of a dense [.., D] tensor of `dtype` -> dst[0, D) in fp32.
inline void LoadRow(DType dtype, const void* base, int64_t row, int64_t d, float* dst) {
  const auto* bytes = static_cast<const unsigned char*>(base);
  ToF32(dtype, bytes + row * d * static_cast<int64_t>(DTypeSize(dtype)), d, dst);
}

// src rows [0, rows) of [rows, D] -> dst [rows, Dp] fp32; the padding of dst
// is left as the caller zeroed it.
inline void PackRows(DType dtype, const void* src, int64_t first_row, int64_t rows, int64_t d,
                     int64_t dp, float* dst) {
  for (int64_t j = 0; j < rows; ++j) LoadRow(dtype, src, first_row + j, d, dst + j * dp);
}

// The packs below are the B operands of PanelGemm (tile_gemm.h): each key
// tile's block in column panels of kNr, so the micro-kernel reads B as one
// dense stream instead of rows a power-of-two stride apart (which thrash the
// same L1 sets). The padding of dst is left as the caller zeroed it.

// src rows [0, rows) of [rows, D] -> dst [ceil(rows / kBk), Dp, kBk] fp32,
// per key tile X^T [Dp, kBk] in column panels. row_tmp: [D] scratch.
inline void PackTransposedTiles(DType dtype, const void* src, int64_t first_row, int64_t rows,
                                int64_t d, int64_t dp, float* dst, float* row_tmp) {
  for (int64_t j = 0; j < rows; ++j) {
    LoadRow(dtype, src, first_row + j, d, row_tmp);
    const int64_t col = j % kBk;
    float* panel = dst + (j / kBk) * dp * kBk + (col / kNr) * dp * kNr + col % kNr;
    for (int64_t c = 0; c < d; ++c) panel[c * kNr] = row_tmp[c];
  }
}

// The same rows -> dst [ceil(rows / kBk), kBk, Dp] fp32, per key tile X
// [kBk, Dp] in column panels. row_tmp: [D] scratch.
inline void PackRowTiles(DType dtype, const void* src, int64_t first_row, int64_t rows, int64_t d,
                         int64_t dp, float* dst, float* row_tmp) {
  for (int64_t j = 0; j < rows; ++j) {
    LoadRow(dtype, src, first_row + j, d, row_tmp);
    float* tile_row = dst + (j / kBk) * kBk * dp + (j % kBk) * kNr;
    for (int64_t c = 0; c < d; ++c) tile_row[(c / kNr) * kBk * kNr + c % kNr] = row_tmp[c];
  }
}

// The bf16 packs of the matrix-unit path (isa_dispatch.h), copied bit for
// bit from bf16 inputs. The padding of dst is left as the caller zeroed it.
inline const uint16_t* Bf16Row(const void* base, int64_t row, int64_t d) {
  return static_cast<const uint16_t*>(base) + row * d;
}

// src rows [first_row, first_row + rows) of [.., D] -> dst [rows, Dp].
inline void PackBf16Rows(const void* src, int64_t first_row, int64_t rows, int64_t d, int64_t dp,
                         uint16_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    __builtin_memcpy(dst + r * dp, Bf16Row(src, first_row + r, d), d * sizeof(uint16_t));
  }
}

// The same rows -> dst [ceil(rows / tile), Dp / 2, tile, 2]: per tile of
// `tile` rows, X^T with pairs of head dims in one word.
inline void PackBf16DimPairs(const void* src, int64_t first_row, int64_t rows, int64_t d,
                             int64_t dp, int64_t tile, uint16_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* x = Bf16Row(src, first_row + r, d);
    uint16_t* out = dst + (r / tile) * dp * tile + 2 * (r % tile);
    for (int64_t c = 0; c < d; ++c) out[(c / 2) * 2 * tile + c % 2] = x[c];
  }
}

// The same rows -> dst [ceil(rows / tile), tile / 2, Dp, 2]: per tile, X
// with pairs of rows in one word.
inline void PackBf16RowPairs(const void* src, int64_t first_row, int64_t rows, int64_t d,
                             int64_t dp, int64_t tile, uint16_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* x = Bf16Row(src, first_row + r, d);
    uint16_t* out = dst + (r / tile) * tile * dp + (r % tile) / 2 * 2 * dp + r % 2;
    for (int64_t c = 0; c < d; ++c) out[2 * c] = x[c];
  }
}

// The same rows packed each way a bf16 product of the backward reads them:
// as rows (PackBf16Rows), dim pairs and row pairs (tiles of `tile` rows);
// a null destination is skipped.
inline void PackBf16Layouts(const void* src, int64_t first_row, int64_t rows, int64_t d, int64_t dp,
                            int64_t tile, uint16_t* as_rows, uint16_t* dim_pairs,
                            uint16_t* row_pairs) {
  if (as_rows != nullptr) PackBf16Rows(src, first_row, rows, d, dp, as_rows);
  if (dim_pairs != nullptr) PackBf16DimPairs(src, first_row, rows, d, dp, tile, dim_pairs);
  if (row_pairs != nullptr) PackBf16RowPairs(src, first_row, rows, d, dp, tile, row_pairs);
}

// Runs fn(r0, rows) for each tile of `tile` rows ([r0, r0 + rows) of a
// sequence of `len`) whose summary (of `tiles`) holds a valid token. A tile
// without one meets no other tile (Classify), so nothing reads its packs.
template <typename Fn>
inline void ForEachValidTile(const TileSummary* sums, int64_t tiles, int64_t tile, int64_t len,
                             Fn&& fn) {
  for (int64_t t = 0; t < tiles; ++t) {
    if (sums[t].valid_count > 0) fn(t * tile, Min(tile, len - t * tile));
  }
}

// Where one (query tile, key tile) pair sits: batch row and first indices in
// the shard and the chunk, and how many real rows and columns it has.
struct TileFrame {
  const MetaPtrs* q_meta;
  const MetaPtrs* kv_meta;
  int64_t q_base;   // b * Lq + first query index of the tile
  int64_t kv_base;  // b * Lk + first key index of the tile
  int64_t q_pos;    // Global position of the tile's first query.
  int64_t kv_pos;   // Global position of the tile's first key.
  int64_t rows;     // Real query rows, <= kBq.
  int64_t cols;     // Real key columns, <= kBk.
};

inline TokenInfo TokenAt(const MetaPtrs& m, int64_t index, int64_t pos) {
  return TokenInfo{pos, m.doc[index], m.vision[index], m.padding[index] != 0};
}

// The tokens along one side of a tile, gathered once per tile for the
// vector mask: document, vision group and whether each is a real token
// (inside the chunk and not padding), the last as a lane mask (-1 or 0).
struct TileTokens {
  int32_t doc[kBk > kBq ? kBk : kBq];
  int32_t vision[kBk > kBq ? kBk : kBq];
  int32_t real[kBk > kBq ? kBk : kBq];
};

// n tokens from `base` of `m`, of which the first `count` are in the chunk.
inline void GatherTokens(const MetaPtrs& m, int64_t base, int64_t count, int64_t n, TileTokens& t) {
  for (int64_t c = 0; c < n; ++c) {
    const bool in = c < count;
    t.doc[c] = in ? m.doc[base + c] : 0;
    t.vision[c] = in ? m.vision[base + c] : -1;
    t.real[c] = in && m.padding[base + c] == 0 ? -1 : 0;
  }
}

inline VecI LoadI(const int32_t* p) {
  VecI v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Allowed() (mask.h) for one row of a score tile against `n` tokens of the
// other side, kLanes at a time: row[c] stays where allowed, -inf elsewhere.
// The row's token is real, in document `doc` > 0 and vision group `vision`;
// q.pos - k.pos at column c is delta0 + kStep * c, which the caller keeps
// within int32 for the whole row. Causality, the window and the vision rule
// depend on positions only through that difference, and the document,
// vision and padding rules are symmetric, so one function serves rows of
// queries (kStep -1) and of keys (kStep +1).
template <int kStep>
inline void MaskRow(float* row, int64_t n, const MaskRule& rule, int32_t doc, int32_t vision,
                    int32_t delta0, const TileTokens& cols) {
  VecI lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = kStep * l;
  const auto window = static_cast<int32_t>(rule.window);
  const bool vision_rule = rule.windowed && rule.vision_bidirectional && vision >= 0;
  for (int64_t c = 0; c < n; c += kLanes) {
    const VecI delta = (delta0 + kStep * static_cast<int32_t>(c)) + lane;
    VecI pos = rule.causal ? (delta >= 0) : VecI{} - 1;
    if (rule.windowed) pos &= delta < window;
    if (vision_rule) pos |= LoadI(cols.vision + c) == vision;
    const VecI ok = LoadI(cols.real + c) & (LoadI(cols.doc + c) == doc) & pos;
    Store(row + c, ok != 0 ? Load(row + c) : Splat(-kInf));
  }
}

// Whether every q.pos - k.pos of the tile, and the window, fit MaskRow's
// int32 arithmetic (they do unless chunks lie 2^30 positions apart).
inline bool MaskFitsInt32(const MaskRule& rule, const TileFrame& f) {
  constexpr int64_t kLimit = int64_t{1} << 30;
  const int64_t d = f.q_pos - f.kv_pos;
  return d < kLimit && d > -kLimit && rule.window < kLimit;
}

// One token's info for the scalar fallback and the row checks.
inline bool RealInDoc(const TokenInfo& t) { return !t.padding && t.doc > 0; }

// Raw scores -> the same where the mask allows, -inf elsewhere (padding rows
// and columns of the tile included); the callers fold the (positive) scale
// into their next pass, under which -inf stays -inf. Rows are queries, s
// [kBq, kBk] (leading dim lds), or with kTransposed keys, s [kBk, kBq] (the
// backward's S^T = K Q^T). Full tiles skip the per-element mask entirely.
template <bool kTransposed>
inline void MaskTile(float* s, int64_t lds, TileClass cls, const MaskRule& rule,
                     const TileFrame& f) {
  if (cls == TileClass::kFull && f.cols == kBk) return;
  constexpr int64_t kRows = kTransposed ? kBk : kBq;
  constexpr int64_t kCols = kTransposed ? kBq : kBk;
  const MetaPtrs& row_meta = kTransposed ? *f.kv_meta : *f.q_meta;
  const MetaPtrs& col_meta = kTransposed ? *f.q_meta : *f.kv_meta;
  const int64_t row_base = kTransposed ? f.kv_base : f.q_base;
  const int64_t col_base = kTransposed ? f.q_base : f.kv_base;
  const int64_t row_pos = kTransposed ? f.kv_pos : f.q_pos;
  const int64_t col_pos = kTransposed ? f.q_pos : f.kv_pos;
  const int64_t rows = kTransposed ? f.cols : f.rows;
  const int64_t cols = kTransposed ? f.rows : f.cols;
  const bool vector = MaskFitsInt32(rule, f);
  TileTokens col_tokens;
  if (vector) GatherTokens(col_meta, col_base, cols, kCols, col_tokens);
  for (int64_t i = 0; i < kRows; ++i) {
    float* row = s + i * lds;
    const TokenInfo t = i < rows ? TokenAt(row_meta, row_base + i, row_pos + i) : TokenInfo{};
    if (i >= rows || !RealInDoc(t)) {
      for (int64_t j = 0; j < kCols; ++j) row[j] = -kInf;
      continue;
    }
    if (vector) {
      // q.pos - k.pos at column 0 of the row.
      const int64_t delta0 = kTransposed ? col_pos - t.pos : t.pos - col_pos;
      MaskRow<kTransposed ? 1 : -1>(row, kCols, rule, t.doc, t.vision, static_cast<int32_t>(delta0),
                                    col_tokens);
      continue;
    }
    for (int64_t j = 0; j < kCols; ++j) {
      if (j >= cols) {
        row[j] = -kInf;
        continue;
      }
      const TokenInfo other = TokenAt(col_meta, col_base + j, col_pos + j);
      const bool allowed = kTransposed ? Allowed(rule, other, t) : Allowed(rule, t, other);
      if (!allowed) row[j] = -kInf;
    }
  }
}

// MaskTile of query rows: s [kBq, kBk], leading dim lds.
inline void MaskScores(float* s, int64_t lds, TileClass cls, const MaskRule& rule,
                       const TileFrame& f) {
  MaskTile<false>(s, lds, cls, rule, f);
}

// MaskTile of key rows: s_t [kBk, kBq].
inline void MaskScoresTransposed(float* s_t, TileClass cls, const MaskRule& rule,
                                 const TileFrame& f) {
  MaskTile<true>(s_t, kBq, cls, rule, f);
}

inline TileFrame MakeFrame(const ChunkProblem& p, int64_t b, int64_t qt, int64_t kt) {
  const int64_t q0 = qt * kBq;
  const int64_t k0 = kt * kBk;
  return TileFrame{&p.q_meta,
                   &p.kv_meta,
                   b * p.shape.q_len + q0,
                   b * p.shape.kv_len + k0,
                   p.q_meta.start + q0,
                   p.kv_meta.start + k0,
                   Min(kBq, p.shape.q_len - q0),
                   Min(kBk, p.shape.kv_len - k0)};
}

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS

#endif  // RINGATTN_KERNELS_CPU_IMPL_FLASH_COMMON_H_
