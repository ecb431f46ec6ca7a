#include "server/ring/schedule.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "kernels/validate.h"

namespace ringattn::ring {
namespace {

// The layout of a config, assumed valid (checked by MakeSchedule; the
// other entry points get a contiguous one when it is not).
batch::ShardLayout LayoutOf(const ScheduleConfig& config) {
  absl::StatusOr<batch::ShardLayout> layout = batch::ShardLayout::Make(
      config.layout, config.cp * config.shard_len, config.shard_len, config.cp);
  if (layout.ok()) return *std::move(layout);
  return batch::ShardLayout(config.cp * config.shard_len, config.shard_len, config.cp);
}

}  // namespace

bool WindowLimitsExchanges(const kernels::LayerConfig& layer, bool batch_has_vision) {
  const bool vision_active = layer.vision_bidirectional && batch_has_vision;
  return layer.kind == kernels::LayerKind::kSliding && layer.causal && !vision_active;
}

int64_t HaloRows(const ScheduleConfig& config) {
  if (!config.halo_exchange || config.cp < 2 || config.layout != batch::LayoutKind::kContiguous ||
      !WindowLimitsExchanges(config.layer, config.batch_has_vision) ||
      config.layer.window > config.shard_len) {
    return 0;
  }
  // Keys q - k < W of a query at the shard's start reach W - 1 rows back.
  return std::max<int64_t>(1, config.layer.window - 1);
}

bool SegmentsMayAttend(const kernels::LayerConfig& layer, bool batch_has_vision,
                       const batch::Segment& q, const batch::Segment& k) {
  const bool sliding = layer.kind == kernels::LayerKind::kSliding;
  if (q.len < 1 || k.len < 1) return false;
  if (sliding && layer.vision_bidirectional && batch_has_vision) return true;
  const int64_t q_min = q.start;
  const int64_t q_max = q_min + q.len - 1;
  const int64_t k_min = k.start;
  const int64_t k_max = k_min + k.len - 1;
  // Some pair with k <= q exists iff k_min <= q_max.
  if (layer.causal && k_min > q_max) return false;
  // The smallest q - k over the pairs (causal pairs only when causal) must
  // be inside the window. Causal pairs reach q - k = 0 whenever the ranges
  // overlap in position, else q_min - k_max.
  if (sliding) {
    const int64_t smallest = layer.causal ? std::max<int64_t>(0, q_min - k_max) : q_min - k_max;
    if (smallest >= layer.window) return false;
  }
  return true;
}

int64_t SegmentPairs(const kernels::LayerConfig& layer, const batch::Segment& q,
                     const batch::Segment& k) {
  const bool sliding = layer.kind == kernels::LayerKind::kSliding;
  const int64_t k_min = k.start;
  const int64_t k_max = k_min + k.len - 1;
  // One row at a time: O(L) beside the step's O(L^2) attention.
  int64_t pairs = 0;
  for (int64_t p = q.start; p < q.start + q.len; ++p) {
    const int64_t hi = layer.causal ? std::min(k_max, p) : k_max;
    // p - key < W; p - W + 1 without overflow for W near INT64_MAX.
    const int64_t lo = sliding && p - k_min >= layer.window ? p - layer.window + 1 : k_min;
    if (hi >= lo) pairs += hi - lo + 1;
  }
  return pairs;
}

bool ChunkMayAttend(const ScheduleConfig& config, int q_rank, int k_rank) {
  const batch::ShardLayout layout = LayoutOf(config);
  for (const batch::Segment& q : layout.Segments(q_rank)) {
    for (const batch::Segment& k : layout.Segments(k_rank)) {
      if (SegmentsMayAttend(config.layer, config.batch_has_vision, q, k)) return true;
    }
  }
  return false;
}

int64_t PositionPairs(const ScheduleConfig& config, int q_rank, int k_rank) {
  const batch::ShardLayout layout = LayoutOf(config);
  int64_t pairs = 0;
  for (const batch::Segment& q : layout.Segments(q_rank)) {
    for (const batch::Segment& k : layout.Segments(k_rank)) {
      pairs += SegmentPairs(config.layer, q, k);
    }
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
  RINGATTN_ASSIGN_OR_RETURN(const batch::ShardLayout layout,
                            batch::ShardLayout::Make(config.layout, config.cp * config.shard_len,
                                                     config.shard_len, config.cp));
  auto may_attend = [&](int q_rank, int k_rank) {
    for (const batch::Segment& q : layout.Segments(q_rank)) {
      for (const batch::Segment& k : layout.Segments(k_rank)) {
        if (SegmentsMayAttend(config.layer, config.batch_has_vision, q, k)) return true;
      }
    }
    return false;
  };

  RingSchedule schedule;
  schedule.exchanges = config.cp - 1;
  if (WindowLimitsExchanges(config.layer, config.batch_has_vision)) {
    if (config.layout == batch::LayoutKind::kContiguous) {
      // Keys older than ceil(W / L) chunks are out of every query's window.
      // ceil(W / L) without W + L - 1, which overflows for W near INT64_MAX.
      const int64_t back = config.layer.window / config.shard_len +
                           (config.layer.window % config.shard_len != 0 ? 1 : 0);
      schedule.exchanges = static_cast<int>(std::min<int64_t>(schedule.exchanges, back));
    } else {
      // The farthest step at which any rank still computes: the same on
      // every rank, since it is taken over all of them.
      int farthest = 0;
      for (int r = 0; r < config.cp; ++r) {
        for (int i = farthest + 1; i < config.cp; ++i) {
          if (may_attend(r, ((r - i) % config.cp + config.cp) % config.cp)) farthest = i;
        }
      }
      schedule.exchanges = farthest;
    }
  }
  const std::vector<batch::Segment>& mine = layout.Segments(config.rank);
  for (int i = 0; i <= schedule.exchanges; ++i) {
    RingStep step;
    step.step = i;
    step.chunk_owner = ((config.rank - i) % config.cp + config.cp) % config.cp;
    const std::vector<batch::Segment>& theirs = layout.Segments(step.chunk_owner);
    for (size_t a = 0; a < mine.size(); ++a) {
      for (size_t c = 0; c < theirs.size(); ++c) {
        if (!SegmentsMayAttend(config.layer, config.batch_has_vision, mine[a], theirs[c])) {
          continue;
        }
        const int64_t pairs = SegmentPairs(config.layer, mine[a], theirs[c]);
        step.blocks.push_back({static_cast<int>(a), static_cast<int>(c), pairs});
        step.pairs += pairs;
      }
    }
    step.compute = !step.blocks.empty();
    schedule.steps.push_back(step);
  }
  schedule.halo_rows = HaloRows(config);
  schedule.grad_home = schedule.steps.back().chunk_owner;
  schedule.grad_from = (config.rank + schedule.exchanges) % config.cp;
  return schedule;
}

}  // namespace ringattn::ring
