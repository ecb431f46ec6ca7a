#ifndef RINGATTN_SERVER_COORDINATOR_SHARD_IO_H_
#define RINGATTN_SERVER_COORDINATOR_SHARD_IO_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "attention/v1/tensor.pb.h"
#include "kernels/dtype.h"
#include "proto/wire/tensor_stream.h"
#include "server/batch/host_tensor.h"
#include "server/batch/shard_layout.h"
#include "server/common/finite_scan.h"
#include "server/coordinator/rank_call.h"
#include "server/coordinator/region_table.h"
#include "server/coordinator/sequence_router.h"
#include "server/coordinator/shard_reader.h"

// The tensor traffic between the client's stream and the ranks of one call:
// inputs routed to the ranks while they arrive, metadata slices sent from
// where they lie, answers gathered back into one tensor along the sequence.
// No tensor along the sequence is ever held whole in the coordinator.

namespace ringattn::coordinator {

// A sequence tensor [B, heads, S, D] of the client's stream, forwarded to
// the ranks as it arrives: rank r gets [B, heads, L, D], its slice of the
// sequence padded with zeros to P = cp * L.
class ShardedInput {
 public:
  ShardedInput(const std::string& name, kernels::DType dtype, const std::vector<int64_t>& shape,
               const batch::ShardLayout& layout, RankCalls& calls);

  // Checks and forwards the next piece (a piece that falls within one
  // rank's slice is passed on as it is, not copied). INVALID_ARGUMENT for a
  // NaN or Inf; UNAVAILABLE when a rank's stream failed (its status tells
  // why).
  absl::Status Add(std::string&& piece);
  // The whole tensor in a client's region: ranks marked `direct` are told
  // to read and check their slices from it themselves; the others get
  // theirs streamed from it, every byte checked as a streamed piece is.
  absl::Status AddRegion(const RegionTensor& tensor, const std::vector<bool>& direct);
  // After the last piece: sends what the writers still hold.
  absl::Status Finish();

 private:
  const std::string name_;
  const batch::ShardLayout layout_;
  const int64_t outer_, position_bytes_;
  RankCalls& calls_;
  SequenceRouter router_;
  server::FiniteScan scan_;
  std::vector<std::unique_ptr<wire::PieceWriter>> writers_;
  std::vector<bool> direct_;  // By rank: it reads the tensor from a region.
};

// Which ranks of a call read and write clients' regions themselves (they
// see the coordinator's shared memory); the others' slices are streamed.
// `table` null: the coordinator takes no region references.
struct CallRegions {
  RegionTable* table = nullptr;
  std::string owner;         // The caller (ClientKey).
  std::vector<bool> direct;  // By rank.
};

// Rank `rank`'s slice of the sequence tensor [outer, S, inner] that lies at
// `tensor`, as the rank reads or writes it: [outer, L, inner], one run per
// segment of the layout, cut at S (the padding has no bytes in the region).
worker::v1::RegionSlice SliceOf(const std::string& name, const RegionTensor& tensor, int64_t outer,
                                int64_t position_bytes, const batch::ShardLayout& layout, int rank);

// The tensors of a client's stream after its header, every piece checked
// against what was declared: those along the sequence sharded to the ranks
// as they arrive, the rest (per-token metadata) kept whole.
class ClientInputs {
 public:
  explicit ClientInputs(uint64_t max_call_bytes, CallRegions regions = {})
      : assembler_(max_call_bytes), regions_(std::move(regions)) {}

  // A required tensor [B, heads, S, D], sharded into `calls` (see
  // ShardedInput).
  void Shard(const std::string& name, kernels::DType dtype, const std::vector<int64_t>& shape,
             const batch::ShardLayout& layout, RankCalls& calls);
  // An optional tensor, kept whole.
  void Keep(const std::string& name, const std::string& dtype, std::vector<int64_t> shape);
  // An optional tensor in any of `dtypes` and `shapes`, kept whole.
  void KeepOneOf(const std::string& name, std::vector<std::string> dtypes,
                 std::vector<std::vector<int64_t>> shapes);

  // One piece: INVALID_ARGUMENT (or RESOURCE_EXHAUSTED) for a piece that is
  // not what was declared; UNAVAILABLE when a rank stopped taking inputs.
  absl::Status Add(attention::v1::TensorChunk& chunk);
  // A whole tensor in a region of the caller's (RegionTable::Resolve's
  // errors; FAILED_PRECONDITION when this coordinator takes no references);
  // UNAVAILABLE as for Add.
  absl::Status AddRef(const attention::v1::TensorRef& ref);
  // After the stream: every required tensor complete, no partial one, and
  // everything sent on (UNAVAILABLE as for Add).
  absl::Status Finish();
  // A kept tensor, or nothing if the client did not send it.
  std::optional<std::vector<std::byte>> Take(const std::string& name);
  // The same with the dtype and shape it came in.
  std::optional<batch::HostTensor> TakeTensor(const std::string& name);

 private:
  wire::TensorAssembler assembler_;
  const CallRegions regions_;
  std::map<std::string, ShardedInput> sharded_;
};

// Sends every rank its slice of `whole` [B, P] along the sequence, streamed
// from where it lies. False once a rank stopped taking inputs.
bool SendSlices(const std::string& name, const std::string& dtype, const batch::HostTensor& whole,
                const batch::ShardLayout& layout, RankCalls& calls);

// Streams the ranks' answers `shard`, [B, heads, L, D] (or [B, heads, L]),
// to `emit` as one tensor along the sequence, cut to the layout's S: read
// from the ranks in the client's row-major order, the padding read and
// dropped. CANCELLED when emit refused a piece (the client left); a rank's
// error otherwise.
absl::Status GatherAnswer(std::vector<ShardReader>& readers, const ExpectedTensor& shard,
                          const batch::ShardLayout& layout,
                          std::function<bool(attention::v1::TensorChunk&)> emit);

// The outputs of a call that go into the caller's regions, by name, and the
// ranks that write their slices there themselves.
struct RegionOutputs {
  std::map<std::string, RegionTensor> tensors;
  std::vector<bool> direct;  // By rank.

  // Whether rank `rank` writes `name` itself (and so does not answer it).
  bool Direct(int rank, const std::string& name) const {
    return rank >= 0 && static_cast<size_t>(rank) < direct.size() && direct[rank] &&
           tensors.contains(name);
  }
};

// Like GatherAnswer, into `tensor` in a region: the answers `shard` of the
// ranks not marked direct (readers by rank; the direct ones are not read),
// each written where its rows lie. FAILED_PRECONDITION when the region was
// shrunk; a rank's error otherwise.
absl::Status ScatterAnswer(std::vector<ShardReader>& readers, const ExpectedTensor& shard,
                           const batch::ShardLayout& layout, const RegionTensor& tensor,
                           const std::vector<bool>& direct);

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_SHARD_IO_H_
