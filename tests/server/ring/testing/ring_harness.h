#ifndef RINGATTN_TESTS_SERVER_RING_TESTING_RING_HARNESS_H_
#define RINGATTN_TESTS_SERVER_RING_TESTING_RING_HARNESS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/synthetic_batch.h"
#include "server/batch/shard_layout.h"
#include "server/ring/ring_attention.h"

namespace ringattn::ring::testing {

// One rank's inputs, sliced from a whole synthetic batch.
struct ShardData {
  std::vector<uint8_t> q, k, v, dout;  // dtype bytes
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  ShardRef Ref(const kernels::reference::SyntheticBatch& batch, int64_t shard_len) const;
};

// Rank r's positions of `layout` (cp * L == S), in its local order.
ShardData SliceShard(const kernels::reference::SyntheticBatch& batch,
                     const batch::ShardLayout& layout, int rank);
// The contiguous layout.
ShardData SliceShard(const kernels::reference::SyntheticBatch& batch, int cp, int rank);

// Packed documents, image blocks across the shard boundaries of every cp
// tested (48, 64, 96, ...), and >= 48 padding tokens at the end of S = 192,
// so the last shard is all padding for cp 4 and 8. Row 1 differs from row 0.
kernels::reference::RowLayout RingTestLayout(int64_t row);

bool BatchHasVision(const kernels::reference::SyntheticBatch& batch);

struct RingRunResult {
  kernels::reference::ChunkedResult whole;  // Reassembled [.., S, ..] results.
  std::vector<RingStats> forward_stats;     // Per rank.
  std::vector<RingStats> backward_stats;
};

// Makes rank r's transport; called on that rank's thread, so transports
// whose creation is collective (NCCL) can rendezvous.
using ConnectFn = std::function<absl::StatusOr<std::unique_ptr<Transport>>(int rank)>;

// Makes rank r's backend, on that rank's thread.
using BackendFn = std::function<absl::StatusOr<std::unique_ptr<kernels::ChunkBackend>>(int rank)>;

// A whole ring in one process: one thread per rank over the transports of
// `connect`, each rank on its own backend of `make_backend`, forward then
// backward, results reassembled over the whole sequence.
absl::StatusOr<RingRunResult> RunRingOn(const kernels::reference::SyntheticBatch& batch,
                                        const kernels::LayerConfig& layer, int cp,
                                        const ConnectFn& connect, const BackendFn& make_backend,
                                        batch::LayoutKind kind = batch::LayoutKind::kContiguous,
                                        bool halo_exchange = true);

// RunRingOn with a CPU backend of `threads_per_rank` threads per rank.
// `kind`: how the sequence is sharded; `halo_exchange`: RingCall's.
absl::StatusOr<RingRunResult> RunRing(const kernels::reference::SyntheticBatch& batch,
                                      const kernels::LayerConfig& layer, int cp,
                                      const ConnectFn& connect, int threads_per_rank = 1,
                                      batch::LayoutKind kind = batch::LayoutKind::kContiguous,
                                      bool halo_exchange = true);

// RunRing over an InProcessHub.
absl::StatusOr<RingRunResult> RunInProcessRing(
    const kernels::reference::SyntheticBatch& batch, const kernels::LayerConfig& layer, int cp,
    int threads_per_rank = 1, batch::LayoutKind kind = batch::LayoutKind::kContiguous,
    bool halo_exchange = true);

}  // namespace ringattn::ring::testing

#endif  // RINGATTN_TESTS_SERVER_RING_TESTING_RING_HARNESS_H_
