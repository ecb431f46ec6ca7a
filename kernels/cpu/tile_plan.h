#ifndef RINGATTN_KERNELS_CPU_TILE_PLAN_H_
#define RINGATTN_KERNELS_CPU_TILE_PLAN_H_

#include <vector>

#include "kernels/block_classification.h"
#include "kernels/chunk_params.h"
#include "kernels/cpu/impl/isa_dispatch.h"

namespace ringattn::kernels::cpu {

// Tile counts and per-tile metadata summaries of one chunk problem. Computed
// from the metadata on every call (O(B * (Lq + Lk)), negligible next to the
// attention itself), so nothing can go stale between batches.
class TilePlanStorage {
 public:
  explicit TilePlanStorage(const ChunkProblem& p);

  // Valid while this object lives.
  const TilePlan& plan() const { return plan_; }

 private:
  std::vector<TileSummary> q_summaries_;   // [B, q_tiles]
  std::vector<TileSummary> kv_summaries_;  // [B, kv_tiles]
  TilePlan plan_;
};

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_TILE_PLAN_H_
