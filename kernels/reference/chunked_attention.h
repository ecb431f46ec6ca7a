#ifndef RINGATTN_KERNELS_REFERENCE_CHUNKED_ATTENTION_H_
#define RINGATTN_KERNELS_REFERENCE_CHUNKED_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/chunk_backend.h"
#include "kernels/layer_config.h"
#include "kernels/reference/synthetic_batch.h"

namespace ringattn::kernels::reference {

// The attention of a whole batch computed the way a ring of `num_chunks`
// ranks computes it, in one process: the sequence is cut into contiguous
// shards, every query shard meets every K/V chunk in ring order (SPEC §3),
// partials are merged in fp32, and in backward dK/dV are summed in fp32 at
// the chunk's owner (SPEC §4). No transport: this checks the chunk kernels
// and the merge against the oracle, and gives the demo its numbers.
struct ChunkedResult {
  std::vector<float> out;  // [B, H, S, D] final output, rounded to the dtype
  std::vector<float> lse;  // [B, H, S]
  std::vector<float> dq;   // [B, H, S, D] fp32
  std::vector<float> dk;   // [B, Hkv, S, D] fp32
  std::vector<float> dv;   // [B, Hkv, S, D] fp32
  double forward_seconds = 0.0;
  double backward_seconds = 0.0;
};

// S must be a multiple of num_chunks. Backward is skipped when !backward.
// Every chunk step runs on `backend` (the CPU kernels, or a device's).
absl::StatusOr<ChunkedResult> RunChunked(const SyntheticBatch& batch, const LayerConfig& layer,
                                         int64_t num_chunks, ChunkBackend& backend,
                                         bool backward = true);

}  // namespace ringattn::kernels::reference

#endif  // RINGATTN_KERNELS_REFERENCE_CHUNKED_ATTENTION_H_
