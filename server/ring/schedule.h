#ifndef RINGATTN_SERVER_RING_SCHEDULE_H_
#define RINGATTN_SERVER_RING_SCHEDULE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/layer_config.h"
#include "server/batch/shard_layout.h"

// Which K/V chunk a rank holds at each ring step, whether it computes on it,
// and where gradients go (SPEC §3-4). A pure function of shapes, config and
// the shard layout: every rank derives the same number of exchanges, so no
// rank waits for a message that nobody sends. Everything is decided in
// global positions, per (query segment, key segment) sub-block of the
// layout (batch/shard_layout.h), so it holds for any layout.

namespace ringattn::ring {

struct ScheduleConfig {
  int cp = 1;             // Ranks in the ring.
  int rank = 0;           // This rank, in [0, cp).
  int64_t shard_len = 1;  // L = P / cp.
  kernels::LayerConfig layer;
  // Whether the batch (all of it, not this shard) holds vision tokens; with
  // bidirectional vision on a sliding layer, any chunk may hold part of an
  // image block, so nothing is skipped by position alone.
  bool batch_has_vision = false;
  // How positions lie on the ranks; every rank holds L of them.
  batch::LayoutKind layout = batch::LayoutKind::kContiguous;
  // Whether a window that fits in a shard may send only its halo (see
  // RingSchedule::halo_rows).
  bool halo_exchange = true;
};

// One (query segment, key segment) pair of a step that is computed:
// indices into the rank's and the chunk owner's ShardLayout::Segments.
struct SubBlock {
  int q_segment = 0;
  int k_segment = 0;
  int64_t pairs = 0;  // As RingStep::pairs, for this sub-block.
};

struct RingStep {
  int step = 0;          // i: 0 is the rank's own chunk.
  int chunk_owner = 0;   // (rank - i) mod cp: whose K/V the rank holds.
  bool compute = false;  // False if no (query, key) pair can attend by position.
  // (query, key) position pairs of this step that the causal and window
  // rules allow, per batch row and head (documents and images not counted):
  // the work the step's compute time is weighed against.
  int64_t pairs = 0;
  // The sub-blocks computed, in (q_segment, k_segment) order; empty when
  // `compute` is false. Sub-blocks no pair can attend are left out.
  std::vector<SubBlock> blocks;
};

struct RingSchedule {
  int exchanges = 0;  // K/V hops; steps.size() == exchanges + 1.
  std::vector<RingStep> steps;
  // Backward: dK/dV accumulated with a chunk travel with it; after the last
  // step they go home to their owner. This rank sends the accumulator of the
  // chunk it holds last to `grad_home`, and receives its own from
  // `grad_from` (both the rank itself when exchanges == 0).
  int grad_home = 0;
  int grad_from = 0;
  // Halo exchange: > 0 when a causal sliding window fits in a contiguous
  // shard (W <= L, no bidirectional images in the batch), so the one
  // exchange needs only the last W - 1 rows of the previous shard: the
  // chunk travels as those rows alone (the halo), and the backward returns
  // only their dK/dV. 0: whole chunks travel.
  int64_t halo_rows = 0;
};

// Whether the sliding window alone limits how far back keys matter, so a
// sliding layer needs only min(cp - 1, ceil(W / L)) exchanges.
bool WindowLimitsExchanges(const kernels::LayerConfig& layer, bool batch_has_vision);

// The rows of the previous shard a halo exchange sends (0: no halo).
int64_t HaloRows(const ScheduleConfig& config);

// Whether some query in global positions `q` may attend some key in `k` by
// position alone (all metadata permitting).
bool SegmentsMayAttend(const kernels::LayerConfig& layer, bool batch_has_vision,
                       const batch::Segment& q, const batch::Segment& k);

// The (query, key) position pairs between `q` and `k` that the causal and
// window rules allow.
int64_t SegmentPairs(const kernels::LayerConfig& layer, const batch::Segment& q,
                     const batch::Segment& k);

// Whether some query of shard `q_rank` may attend some key of chunk
// `k_rank` by position alone (all metadata permitting), under the
// config's layout.
bool ChunkMayAttend(const ScheduleConfig& config, int q_rank, int k_rank);

// The (query, key) position pairs between shard `q_rank` and chunk `k_rank`
// that the causal and window rules allow, under the config's layout.
int64_t PositionPairs(const ScheduleConfig& config, int q_rank, int k_rank);

// INVALID_ARGUMENT for cp < 1, rank out of range, L < 1, a bad layer, or a
// layout that cannot hold L (zigzag with an odd L).
absl::StatusOr<RingSchedule> MakeSchedule(const ScheduleConfig& config);

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_SCHEDULE_H_
