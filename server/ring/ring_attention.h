#ifndef RINGATTN_SERVER_RING_RING_ATTENTION_H_
#define RINGATTN_SERVER_RING_RING_ATTENTION_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/attention_shape.h"
#include "kernels/chunk_backend.h"
#include "kernels/dtype.h"
#include "kernels/layer_config.h"
#include "server/batch/shard_layout.h"
#include "server/ring/transport.h"

// Ring attention forward and backward of one rank (SPEC §3-4): K/V chunks
// travel around the ring while each rank computes its query shard against
// the chunk it holds; communication of step i+1 overlaps the compute of
// step i. Every rank of the ring calls these with the same shapes and call
// config; each wait is bounded by the call's timeout, and on any error the
// rank aborts its transport so its peers fail fast instead of hanging.
//
// Glossary: B batch, H query heads, Hkv kv heads, L shard length, D head dim.

namespace ringattn::ring {

// This rank's shard of one call: its L positions of the call's layout, in
// local order (the concatenation of its segments; for the contiguous layout
// [rank * L, (rank + 1) * L)). Its shape is the kernels' (a shard meets
// chunks of its own length, so q_len == kv_len == L).
struct ShardRef {
  kernels::AttentionShape shape;     // B, H, Hkv, L (q_len and kv_len), D, dtype
  std::span<const std::byte> q;      // [B, H, L, D] dtype
  std::span<const std::byte> k;      // [B, Hkv, L, D] dtype
  std::span<const std::byte> v;      // [B, Hkv, L, D] dtype
  std::span<const int32_t> doc;      // [B, L]
  std::span<const int32_t> vision;   // [B, L]
  std::span<const uint8_t> padding;  // [B, L]
};

// What every rank must agree on for one call.
struct RingCall {
  kernels::LayerConfig layer;
  bool batch_has_vision = false;               // Any vision token in the whole batch.
  uint64_t generation = 0;                     // Ring generation; bumped on rebuild.
  uint64_t sequence = 0;                       // Distinct per call within a generation.
  absl::Duration timeout = absl::Seconds(60);  // Bound on every wait.
  // A wait that makes no progress this long means a peer stalled (hung,
  // stopped, or stuck in its own step): the call fails with UNAVAILABLE
  // well before `timeout`. Infinite: only `timeout` bounds a wait.
  absl::Duration stall_timeout = absl::InfiniteDuration();
  // Where the positions lie (batch/shard_layout.h); the shard's own and
  // every chunk's positions follow from it, so every rank computes the
  // (query segment, key segment) sub-blocks some pair may attend.
  batch::LayoutKind layout = batch::LayoutKind::kContiguous;
  // Where a causal sliding window fits in a contiguous shard, send only the
  // rows of the previous shard it reaches (RingSchedule::halo_rows). Off:
  // whole chunks travel (the results are the same).
  bool halo_exchange = true;
};

struct StepStats {
  int step = 0;
  int chunk_owner = 0;
  bool computed = false;
  double compute_seconds = 0.0;
  double wait_seconds = 0.0;  // Blocked on communication after compute.
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  // (query, key) pairs the position rules allow, over the shard's batch
  // rows and query heads; 0 when the step computes nothing.
  int64_t pairs = 0;
  // Bytes copied between host and device memory during the step: 0 for a
  // device-resident ring (and for any host backend); a device backend on a
  // host-memory transport stages every message.
  int64_t host_device_bytes = 0;
};

struct RingStats {
  std::vector<StepStats> steps;
  double total_seconds = 0.0;
  double compute_seconds = 0.0;
  double wait_seconds = 0.0;
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  // Over the whole call: the shard's upload and the answer's download
  // included (0 on a host backend).
  int64_t host_device_bytes = 0;
};

// What a forward on a device backend leaves in the backend's space for the
// backward of the same session: the shard (query, its own K/V chunk, the
// metadata, a halo) and the merged output and log-sum-exp, in the ring's
// order. Holding it holds that device memory. Opaque outside the ring.
class ForwardResidue;

struct RingForwardResult {
  std::vector<std::byte> out;  // [B, H, L, D] in the input dtype
  std::vector<float> lse;      // [B, H, L]; -inf for rows that attend nothing
  RingStats stats;
  // Set when the forward was asked to keep its state and its backend's
  // space is a device's (a host space has nothing to keep: the caller's
  // own memory is what the ring reads).
  std::shared_ptr<const ForwardResidue> residue;
};

struct RingBackwardResult {
  std::vector<float> dq;  // [B, H, L, D]
  std::vector<float> dk;  // [B, Hkv, L, D], summed over every rank in fp32
  std::vector<float> dv;  // [B, Hkv, L, D]
  RingStats stats;
};

// `backend` computes each step's chunk (CPU or CUDA); it is used from the
// calling thread only. Everything a step computes on lives in the backend's
// memory space (kernels/memory_space.h) for the whole call: the shard goes
// in once before the first step and the answer comes home once after the
// last, so on a GPU no step copies across PCIe when the transport moves
// device memory (NCCL); on a host-memory transport each message is staged
// (staged_transport.h). The arguments and results here are host memory.
// keep_for_backward: leave the call's state on the device for the backward
// (RingForwardResult::residue).
absl::StatusOr<RingForwardResult> RingForward(Transport& transport, kernels::ChunkBackend& backend,
                                              const ShardRef& shard, const RingCall& call,
                                              bool keep_for_backward = false);

// out: [B, H, L, D] dtype and lse: [B, H, L], as RingForward returned them;
// dout: [B, H, L, D] dtype. `residue`, when given, is that forward's kept
// state on this backend: the shard, out and lse are then read from it and
// only dout goes up to the device (FAILED_PRECONDITION if it is another
// backend's or shard's).
absl::StatusOr<RingBackwardResult> RingBackward(
    Transport& transport, kernels::ChunkBackend& backend, const ShardRef& shard,
    std::span<const std::byte> out, std::span<const std::byte> dout, std::span<const float> lse,
    const RingCall& call, const ForwardResidue* residue = nullptr);

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_RING_ATTENTION_H_
