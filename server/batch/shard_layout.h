#ifndef RINGATTN_SERVER_BATCH_SHARD_LAYOUT_H_
#define RINGATTN_SERVER_BATCH_SHARD_LAYOUT_H_

#include <cstdint>

// Where each rank's shard of a sequence lies (SPEC §1 rules 7-8): the S
// positions padded on the right to P, the next multiple of 2 * cp, and cut
// into cp contiguous shards of L = P / cp. The one place this arithmetic is
// done, for whole tensors (batch_prep.h) and for tensors sharded while they
// stream through the coordinator alike.

namespace ringattn::batch {

// P for a sequence of `seq_len` on `cp` ranks (no padding when already a
// multiple of 2 * cp).
int64_t PaddedLength(int64_t seq_len, int cp);

class ShardLayout {
 public:
  // L = PaddedLength(seq_len, cp) / cp.
  ShardLayout(int64_t seq_len, int cp);
  // A shard length chosen by the caller; cp * shard_len >= seq_len.
  ShardLayout(int64_t seq_len, int64_t shard_len, int cp);

  int64_t seq_len() const { return seq_len_; }             // S
  int64_t shard_len() const { return shard_len_; }         // L
  int64_t padded_len() const { return shard_len_ * cp_; }  // P
  int cp() const { return cp_; }

  // Rank r holds the global positions [Begin(r), End(r)).
  int64_t Begin(int rank) const { return rank * shard_len_; }
  int64_t End(int rank) const { return (rank + 1) * shard_len_; }
  // How many of them, from Begin(r) on, are the caller's (the rest is
  // padding): L for a rank inside the sequence, 0 for one past it.
  int64_t RealLen(int rank) const;
  // The rank holding global position `position` (in [0, P)).
  int RankOf(int64_t position) const { return static_cast<int>(position / shard_len_); }

 private:
  int64_t seq_len_;
  int64_t shard_len_;
  int cp_;
};

}  // namespace ringattn::batch

#endif  // RINGATTN_SERVER_BATCH_SHARD_LAYOUT_H_
