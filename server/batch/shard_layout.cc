#include "server/batch/shard_layout.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::batch {

std::string_view LayoutName(LayoutKind kind) {
  switch (kind) {
    case LayoutKind::kContiguous:
      return "contiguous";
    case LayoutKind::kZigzag:
      return "zigzag";
  }
  return "unknown";
}

int64_t PaddedLength(int64_t seq_len, int cp) {
  const int64_t m = 2 * static_cast<int64_t>(cp);
  return (seq_len + m - 1) / m * m;
}

ShardLayout::ShardLayout(int64_t seq_len, int cp)
    : ShardLayout(seq_len, PaddedLength(seq_len, cp) / cp, cp) {}

ShardLayout::ShardLayout(int64_t seq_len, int64_t shard_len, int cp)
    : ShardLayout(LayoutKind::kContiguous, seq_len, shard_len, cp) {}

ShardLayout::ShardLayout(LayoutKind kind, int64_t seq_len, int64_t shard_len, int cp)
    : kind_(kind), seq_len_(seq_len), shard_len_(shard_len), cp_(cp), segments_(cp) {
  if (kind == LayoutKind::kZigzag) {
    const int64_t half = shard_len / 2;
    for (int r = 0; r < cp; ++r) {
      segments_[r] = {{r * half, half}, {(2 * int64_t{cp} - 1 - r) * half, half}};
    }
  } else {
    for (int r = 0; r < cp; ++r) segments_[r] = {{r * shard_len, shard_len}};
  }
  for (int r = 0; r < cp; ++r) {
    int64_t local = 0;
    for (const Segment& s : segments_[r]) {
      runs_.push_back({s.start, s.len, r, local});
      local += s.len;
    }
  }
  std::sort(runs_.begin(), runs_.end(),
            [](const Run& a, const Run& b) { return a.start < b.start; });
}

absl::StatusOr<ShardLayout> ShardLayout::Make(LayoutKind kind, int64_t seq_len, int64_t shard_len,
                                              int cp) {
  if (cp < 1 || shard_len < 1 || seq_len < 0 || shard_len * cp < seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("no layout puts ", seq_len, " positions on ", cp, " ranks of ", shard_len));
  }
  if (kind == LayoutKind::kZigzag && shard_len % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a zigzag layout needs an even shard length, got ", shard_len));
  }
  if (kind != LayoutKind::kContiguous && kind != LayoutKind::kZigzag) {
    return absl::InvalidArgumentError("unknown layout kind");
  }
  return ShardLayout(kind, seq_len, shard_len, cp);
}

int64_t ShardLayout::RealLen(int rank) const {
  int64_t n = 0;
  for (const Segment& s : segments_[rank]) n += std::clamp<int64_t>(seq_len_ - s.start, 0, s.len);
  return n;
}

const Run& ShardLayout::RunOf(int64_t position) const {
  auto it = std::upper_bound(runs_.begin(), runs_.end(), position,
                             [](int64_t p, const Run& r) { return p < r.start; });
  return *(it - 1);
}

}  // namespace ringattn::batch
