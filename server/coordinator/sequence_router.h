#ifndef RINGATTN_SERVER_COORDINATOR_SEQUENCE_ROUTER_H_
#define RINGATTN_SERVER_COORDINATOR_SEQUENCE_ROUTER_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
#include "server/batch/shard_layout.h"

// Shards a tensor while its bytes stream in (SPEC §1.7-1.8): the tensor
// [outer, S, inner] arrives row-major in pieces of any size; rank r gets
// [outer, L, inner], its positions of the layout (for the contiguous one
// r*L:(r+1)*L) of the sequence padded to P = cp * L, in its own row-major
// local order, with zeros for positions S..P-1. A layout's segments are
// sorted, so walking a row in global order meets each rank's positions in
// its local order. Nothing is gathered first, so the coordinator forwards a
// piece as soon as it has it.

namespace ringattn::coordinator {

class SequenceRouter {
 public:
  // position_bytes: bytes of one sequence position (inner * element size).
  SequenceRouter(int64_t outer, const batch::ShardLayout& layout, int64_t position_bytes);
  SequenceRouter(int64_t outer, int64_t seq_len, int64_t shard_len, int cp, int64_t position_bytes)
      : SequenceRouter(outer, batch::ShardLayout(seq_len, shard_len, cp), position_bytes) {}

  // Routes the next bytes of the tensor: emit(rank, run) in order for each
  // rank, zero runs included. Stops and returns false as soon as emit does,
  // or if `piece` runs past the end of the tensor.
  bool Add(std::span<const std::byte> piece,
           absl::FunctionRef<bool(int rank, std::span<const std::byte> run)> emit);

  // Every byte of the tensor has been routed.
  bool done() const { return row_ == outer_; }

 private:
  bool EmitPadding(absl::FunctionRef<bool(int, std::span<const std::byte>)> emit);

  const int64_t outer_, position_bytes_;
  const batch::ShardLayout layout_;
  std::vector<std::byte> zeros_;
  int64_t row_ = 0;     // Outer index of the row being filled.
  int64_t offset_ = 0;  // Bytes of that row routed so far.
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_SEQUENCE_ROUTER_H_
