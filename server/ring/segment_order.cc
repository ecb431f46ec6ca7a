#include "server/ring/segment_order.h"

namespace ringattn::ring {

std::vector<int64_t> SegmentOffsets(const std::vector<batch::Segment>& segments) {
  std::vector<int64_t> offsets;
  int64_t local = 0;
  for (const batch::Segment& s : segments) {
    offsets.push_back(local);
    local += s.len;
  }
  return offsets;
}

}  // namespace ringattn::ring
