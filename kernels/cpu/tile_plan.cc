#include "kernels/cpu/tile_plan.h"

#include <algorithm>

namespace ringattn::kernels::cpu {
namespace {

// out: [B, ceil(len / tile)] summaries of meta: [B, len].
std::vector<TileSummary> SummarizeTiles(const MetaPtrs& meta, int64_t batch, int64_t len,
                                        int64_t tile) {
  const int64_t tiles = (len + tile - 1) / tile;
  std::vector<TileSummary> out(batch * tiles);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t first = b * len + t * tile;
      const auto count = static_cast<int32_t>(std::min(tile, len - t * tile));
      out[b * tiles + t] = Summarize(meta.doc + first, meta.vision + first, meta.padding + first,
                                     meta.start + t * tile, count);
    }
  }
  return out;
}

}  // namespace

TilePlanStorage::TilePlanStorage(const ChunkProblem& p)
    : q_summaries_(SummarizeTiles(p.q_meta, p.shape.batch, p.shape.q_len, kBq)),
      kv_summaries_(SummarizeTiles(p.kv_meta, p.shape.batch, p.shape.kv_len, kBk)) {
  plan_.head_dim_padded = RoundUp(p.shape.head_dim, kHeadDimAlign);
  plan_.q_tiles = (p.shape.q_len + kBq - 1) / kBq;
  plan_.kv_tiles = (p.shape.kv_len + kBk - 1) / kBk;
  plan_.q_summaries = q_summaries_.data();
  plan_.kv_summaries = kv_summaries_.data();
}

}  // namespace ringattn::kernels::cpu
