#include "server/ring/schedule.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "kernels/validate.h"

namespace ringattn::ring {

bool WindowLimitsExchanges(const kernels::LayerConfig& layer, bool batch_has_vision) {
  const bool vision_active = layer.vision_bidirectional && batch_has_vision;
  return layer.kind == kernels::LayerKind::kSliding && layer.causal && !vision_active;
}

bool ChunkMayAttend(const ScheduleConfig& config, int q_rank, int k_rank) {
  const kernels::LayerConfig& layer = config.layer;
  const bool sliding = layer.kind == kernels::LayerKind::kSliding;
  if (sliding && layer.vision_bidirectional && config.batch_has_vision) return true;
  const int64_t L = config.shard_len;
  const int64_t q_min = q_rank * L;
  const int64_t q_max = q_min + L - 1;
  const int64_t k_min = k_rank * L;
  const int64_t k_max = k_min + L - 1;
  // Some pair with k <= q exists iff k_min <= q_max.
  if (layer.causal && k_min > q_max) return false;
  // The smallest q - k over the pairs (causal pairs only when causal) must
  // be inside the window. Causal pairs reach q - k = 0 whenever the chunks
  // overlap in position, else q_min - k_max.
  if (sliding) {
    const int64_t smallest = layer.causal ? std::max<int64_t>(0, q_min - k_max) : q_min - k_max;
    if (smallest >= layer.window) return false;
  }
  return true;
}

int64_t PositionPairs(const ScheduleConfig& config, int q_rank, int k_rank) {
  const kernels::LayerConfig& layer = config.layer;
  const bool sliding = layer.kind == kernels::LayerKind::kSliding;
  const int64_t L = config.shard_len;
  const int64_t k_min = k_rank * L;
  const int64_t k_max = k_min + L - 1;
  // One row at a time: O(L) beside the step's O(L^2) attention.
  int64_t pairs = 0;
  for (int64_t q = q_rank * L; q < (q_rank + 1) * L; ++q) {
    const int64_t hi = layer.causal ? std::min(k_max, q) : k_max;
    // q - k < W; q - W + 1 without overflow for W near INT64_MAX.
    const int64_t lo = sliding && q - k_min >= layer.window ? q - layer.window + 1 : k_min;
    if (hi >= lo) pairs += hi - lo + 1;
  }
  return pairs;
}

absl::StatusOr<RingSchedule> MakeSchedule(const ScheduleConfig& config) {
  if (config.cp < 1 || config.rank < 0 || config.rank >= config.cp) {
    return absl::InvalidArgumentError(
        absl::StrCat("ring rank ", config.rank, " is not in [0, ", config.cp, ")"));
  }
  if (config.shard_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard length must be >= 1, got ", config.shard_len));
  }
  RINGATTN_RETURN_IF_ERROR(kernels::ValidateLayer(config.layer));

  RingSchedule schedule;
  schedule.exchanges = config.cp - 1;
  if (WindowLimitsExchanges(config.layer, config.batch_has_vision)) {
    // Keys older than ceil(W / L) chunks are out of every query's window.
    // ceil(W / L) without W + L - 1, which overflows for W near INT64_MAX.
    const int64_t back = config.layer.window / config.shard_len +
                         (config.layer.window % config.shard_len != 0 ? 1 : 0);
    schedule.exchanges = static_cast<int>(std::min<int64_t>(schedule.exchanges, back));
  }
  for (int i = 0; i <= schedule.exchanges; ++i) {
    RingStep step;
    step.step = i;
    step.chunk_owner = ((config.rank - i) % config.cp + config.cp) % config.cp;
    step.compute = ChunkMayAttend(config, config.rank, step.chunk_owner);
    if (step.compute) step.pairs = PositionPairs(config, config.rank, step.chunk_owner);
    schedule.steps.push_back(step);
  }
  schedule.grad_home = schedule.steps.back().chunk_owner;
  schedule.grad_from = (config.rank + schedule.exchanges) % config.cp;
  return schedule;
}

}  // namespace ringattn::ring
