#ifndef RINGATTN_SERVER_WORKER_REQUEST_CONVERT_H_
#define RINGATTN_SERVER_WORKER_REQUEST_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/attention_shape.h"
#include "kernels/layer_config.h"
#include "server/batch/shard_layout.h"
#include "server/ring/ring_attention.h"
#include "worker/v1/worker_service.pb.h"

// The worker API's messages as the worker's own types: a shard call is
// converted and checked here once, as soon as its first message arrives, and
// nothing past the handlers reads the proto again.

namespace ringattn::worker {

// A ShardCall, checked.
struct ShardSpec {
  std::string session;
  // Its shard's sizes: q_len = kv_len = L, the shard length (every chunk
  // that visits in the ring is one too).
  kernels::AttentionShape shape;
  kernels::LayerConfig layer;  // Defaults filled in.
  uint64_t generation = 0;     // The ring the call was numbered in.
  absl::Duration timeout;      // Bound on every wait of the call.
  // How the sequence lies on the ranks: the shard holds this rank's
  // positions of it, in local order.
  batch::LayoutKind layout = batch::LayoutKind::kContiguous;
};

// INVALID_ARGUMENT for sizes out of range, an unknown dtype, a bad layer, or
// a layout that cannot hold the shard length.
absl::StatusOr<ShardSpec> ShardSpecFromCall(const worker::v1::ShardCall& call);

// The tensors of a shard: [B, H, L, D] (q, out, dout, dq), [B, Hkv, L, D]
// (k, v, dk, dv) and [B, L] (per-token metadata).
std::vector<int64_t> QueryDims(const kernels::AttentionShape& s);
std::vector<int64_t> KvDims(const kernels::AttentionShape& s);
std::vector<int64_t> TokenDims(const kernels::AttentionShape& s);

// A call with its commit: its place in the ring's order, and whether the
// batch holds vision tokens (known only once the client's stream was read).
struct CommittedCall {
  ShardSpec spec;
  uint64_t sequence = 0;  // 0 until committed.
  bool batch_has_vision = false;
};

// What every rank must agree on to run `call` with `layer`.
ring::RingCall RingCallOf(const CommittedCall& call, const kernels::LayerConfig& layer);

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_REQUEST_CONVERT_H_
