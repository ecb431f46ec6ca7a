#include "server/batch/shard_layout.h"

#include <algorithm>

namespace ringattn::batch {

int64_t PaddedLength(int64_t seq_len, int cp) {
  const int64_t m = 2 * static_cast<int64_t>(cp);
  return (seq_len + m - 1) / m * m;
}

ShardLayout::ShardLayout(int64_t seq_len, int cp)
    : ShardLayout(seq_len, PaddedLength(seq_len, cp) / cp, cp) {}

ShardLayout::ShardLayout(int64_t seq_len, int64_t shard_len, int cp)
    : seq_len_(seq_len), shard_len_(shard_len), cp_(cp) {}

int64_t ShardLayout::RealLen(int rank) const {
  return std::clamp<int64_t>(seq_len_ - Begin(rank), 0, shard_len_);
}

}  // namespace ringattn::batch
