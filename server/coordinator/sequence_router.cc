#include "server/coordinator/sequence_router.h"

#include <algorithm>

namespace ringattn::coordinator {
namespace {

constexpr int64_t kZeroRunBytes = int64_t{1} << 20;

}  // namespace

SequenceRouter::SequenceRouter(int64_t outer, const batch::ShardLayout& layout,
                               int64_t position_bytes)
    : outer_(outer), position_bytes_(position_bytes), layout_(layout) {
  const int64_t pad_bytes = (layout_.padded_len() - layout_.seq_len()) * position_bytes_;
  zeros_.resize(static_cast<size_t>(std::clamp<int64_t>(pad_bytes, 0, kZeroRunBytes)));
}

bool SequenceRouter::EmitPadding(absl::FunctionRef<bool(int, std::span<const std::byte>)> emit) {
  for (int64_t pos = layout_.seq_len(); pos < layout_.padded_len();) {
    const batch::Run& run = layout_.RunOf(pos);
    const int rank = run.rank;
    const int64_t end = run.start + run.len;
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
  const int64_t row_bytes = layout_.seq_len() * position_bytes_;
  while (!piece.empty()) {
    if (done()) return false;
    // The rank whose real positions the row has reached, and where they end.
    const batch::Run& run = layout_.RunOf(offset_ / position_bytes_);
    const int rank = run.rank;
    const int64_t segment_end = std::min(run.start + run.len, layout_.seq_len()) * position_bytes_;
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

}  // namespace ringattn::coordinator
