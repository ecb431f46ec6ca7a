#ifndef RINGATTN_SERVER_RING_SEGMENT_ORDER_H_
#define RINGATTN_SERVER_RING_SEGMENT_ORDER_H_

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "server/batch/shard_layout.h"

// A shard tensor [outer, L, row] holds its positions in local order: the
// concatenation of its segments (batch/shard_layout.h). The kernels take a
// dense tensor of consecutive positions, so the ring keeps each shard tensor
// in segment-major order instead: for each segment s, the block
// [outer, L_s, row], blocks one after the other. A segment's block is then
// itself a dense tensor. With one segment both orders are the same.

namespace ringattn::ring {

// Local offsets of the segments: their prefix sums.
std::vector<int64_t> SegmentOffsets(const std::vector<batch::Segment>& segments);

// in, out: [outer, L, row] elements, L the segments' total length.
template <typename T>
void ToSegmentMajor(std::span<const T> in, std::span<T> out, int64_t outer, int64_t row,
                    const std::vector<batch::Segment>& segments) {
  int64_t L = 0;
  for (const batch::Segment& s : segments) L += s.len;
  int64_t block = 0;  // Elements before the segment's block.
  int64_t local = 0;
  for (const batch::Segment& s : segments) {
    for (int64_t o = 0; o < outer; ++o) {
      std::memcpy(out.data() + block + o * s.len * row, in.data() + (o * L + local) * row,
                  static_cast<size_t>(s.len * row) * sizeof(T));
    }
    block += outer * s.len * row;
    local += s.len;
  }
}

template <typename T>
void FromSegmentMajor(std::span<const T> in, std::span<T> out, int64_t outer, int64_t row,
                      const std::vector<batch::Segment>& segments) {
  int64_t L = 0;
  for (const batch::Segment& s : segments) L += s.len;
  int64_t block = 0;
  int64_t local = 0;
  for (const batch::Segment& s : segments) {
    for (int64_t o = 0; o < outer; ++o) {
      std::memcpy(out.data() + (o * L + local) * row, in.data() + block + o * s.len * row,
                  static_cast<size_t>(s.len * row) * sizeof(T));
    }
    block += outer * s.len * row;
    local += s.len;
  }
}

// A shard tensor in segment-major order: a view of the tensor itself when it
// has one segment, else a reordered copy.
template <typename T>
class SegmentMajor {
 public:
  SegmentMajor(std::span<const T> in, int64_t outer, int64_t row,
               const std::vector<batch::Segment>& segments) {
    if (segments.size() == 1) {
      view_ = in;
      return;
    }
    owned_.resize(in.size());
    ToSegmentMajor<T>(in, owned_, outer, row, segments);
    view_ = owned_;
  }
  SegmentMajor(const SegmentMajor&) = delete;
  SegmentMajor& operator=(const SegmentMajor&) = delete;

  std::span<const T> span() const { return view_; }

 private:
  std::vector<T> owned_;
  std::span<const T> view_;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_SEGMENT_ORDER_H_
