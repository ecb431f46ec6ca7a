#include "server/coordinator/sequence_router.h"

#include <algorithm>

namespace ringattn::server {
namespace {

constexpr int64_t kZeroRunBytes = int64_t{1} << 20;

}  // namespace

SequenceRouter::SequenceRouter(int64_t outer, int64_t seq_len, int64_t shard_len, int cp,
                               int64_t position_bytes)
    : outer_(outer),
      seq_len_(seq_len),
      shard_len_(shard_len),
      position_bytes_(position_bytes),
      cp_(cp) {
  const int64_t pad_bytes = (cp_ * shard_len_ - seq_len_) * position_bytes_;
  zeros_.resize(static_cast<size_t>(std::clamp<int64_t>(pad_bytes, 0, kZeroRunBytes)));
}

bool SequenceRouter::EmitPadding(absl::FunctionRef<bool(int, std::span<const std::byte>)> emit) {
  const int64_t padded = cp_ * shard_len_;
  for (int64_t pos = seq_len_; pos < padded;) {
    const int rank = static_cast<int>(pos / shard_len_);
    const int64_t end = std::min<int64_t>((rank + 1) * shard_len_, padded);
    for (int64_t left = (end - pos) * position_bytes_; left > 0;) {
      const int64_t n = std::min<int64_t>(left, static_cast<int64_t>(zeros_.size()));
      if (!emit(rank, std::span<const std::byte>(zeros_).first(static_cast<size_t>(n)))) {
        return false;
      }
      left -= n;
    }
    pos = end;
  }
  return true;
}

bool SequenceRouter::Add(std::span<const std::byte> piece,
                         absl::FunctionRef<bool(int, std::span<const std::byte>)> emit) {
  const int64_t row_bytes = seq_len_ * position_bytes_;
  const int64_t shard_bytes = shard_len_ * position_bytes_;
  while (!piece.empty()) {
    if (done()) return false;
    const int rank = static_cast<int>(offset_ / shard_bytes);
    const int64_t segment_end = std::min<int64_t>((rank + 1) * shard_bytes, row_bytes);
    const auto n = static_cast<size_t>(
        std::min<int64_t>(segment_end - offset_, static_cast<int64_t>(piece.size())));
    if (!emit(rank, piece.first(n))) return false;
    piece = piece.subspan(n);
    offset_ += static_cast<int64_t>(n);
    if (offset_ == row_bytes) {
      if (!EmitPadding(emit)) return false;
      ++row_;
      offset_ = 0;
    }
  }
  return true;
}

}  // namespace ringattn::server
