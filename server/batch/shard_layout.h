#ifndef RINGATTN_SERVER_BATCH_SHARD_LAYOUT_H_
#define RINGATTN_SERVER_BATCH_SHARD_LAYOUT_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

// Where each rank's shard of a sequence lies (SPEC §1 rules 7-8): the S
// positions padded on the right to P, the next multiple of 2 * cp, and cut
// into cp shards of L = P / cp positions each. A layout is data: rank r
// holds a list of segments of global positions, sorted by start, and its
// shard is their concatenation in that order (its local order). The one
// place this arithmetic is done, for whole tensors (batch_prep.h), for
// tensors sharded while they stream through the coordinator, and for the
// ring's schedule alike.
//
// - contiguous (SPEC §1.8): rank r holds [r*L, (r+1)*L). Right for sliding
//   layers: a window reaches back only into the previous shards.
// - zigzag: the sequence cut into 2*cp chunks of L/2; rank r holds chunks r
//   and 2*cp-1-r, so every rank holds as many causal (query, key) pairs as
//   every other. Right for full causal layers. Needs an even L.

namespace ringattn::batch {

enum class LayoutKind : uint8_t { kContiguous, kZigzag };

// "contiguous", "zigzag".
std::string_view LayoutName(LayoutKind kind);

// P for a sequence of `seq_len` on `cp` ranks (no padding when already a
// multiple of 2 * cp).
int64_t PaddedLength(int64_t seq_len, int cp);

// Global positions [start, start + len).
struct Segment {
  int64_t start = 0;
  int64_t len = 0;
};

// One segment placed: global positions [start, start + len) are local
// positions [local, local + len) of `rank`.
struct Run {
  int64_t start = 0;
  int64_t len = 0;
  int rank = 0;
  int64_t local = 0;
};

class ShardLayout {
 public:
  // Contiguous, L = PaddedLength(seq_len, cp) / cp.
  ShardLayout(int64_t seq_len, int cp);
  // Contiguous with a shard length chosen by the caller; cp * shard_len >=
  // seq_len.
  ShardLayout(int64_t seq_len, int64_t shard_len, int cp);
  // Any kind. INVALID_ARGUMENT for cp < 1, shard_len < 1, cp * shard_len <
  // seq_len, or a zigzag layout of an odd shard length.
  static absl::StatusOr<ShardLayout> Make(LayoutKind kind, int64_t seq_len, int64_t shard_len,
                                          int cp);

  LayoutKind kind() const { return kind_; }
  int64_t seq_len() const { return seq_len_; }             // S
  int64_t shard_len() const { return shard_len_; }         // L
  int64_t padded_len() const { return shard_len_ * cp_; }  // P
  int cp() const { return cp_; }

  // Rank r's segments, sorted by start; their lengths sum to L.
  const std::vector<Segment>& Segments(int rank) const { return segments_[rank]; }
  // Every segment of every rank, sorted by start: a partition of [0, P).
  // Walking them in order visits each rank's positions in its local order.
  const std::vector<Run>& Runs() const { return runs_; }

  // Contiguous layouts only: rank r holds the global positions
  // [Begin(r), End(r)).
  int64_t Begin(int rank) const { return rank * shard_len_; }
  int64_t End(int rank) const { return (rank + 1) * shard_len_; }
  // How many of rank r's positions are the caller's (< S; the rest is
  // padding): L for a rank inside the sequence, 0 for one past it.
  int64_t RealLen(int rank) const;
  // The run holding global position `position` (in [0, P)).
  const Run& RunOf(int64_t position) const;

 private:
  ShardLayout(LayoutKind kind, int64_t seq_len, int64_t shard_len, int cp);

  LayoutKind kind_;
  int64_t seq_len_;
  int64_t shard_len_;
  int cp_;
  std::vector<std::vector<Segment>> segments_;  // By rank.
  std::vector<Run> runs_;
};

}  // namespace ringattn::batch

#endif  // RINGATTN_SERVER_BATCH_SHARD_LAYOUT_H_
