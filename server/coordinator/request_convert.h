#ifndef RINGATTN_SERVER_COORDINATOR_REQUEST_CONVERT_H_
#define RINGATTN_SERVER_COORDINATOR_REQUEST_CONVERT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attention/v1/attention_service.pb.h"
#include "grpcpp/server_context.h"
#include "kernels/dtype.h"
#include "kernels/layer_config.h"
#include "server/batch/shard_layout.h"
#include "worker/v1/worker_service.pb.h"

// The public API's messages as the coordinator's own types: each request is
// converted and checked here once, before any memory is sized by what the
// client declared, and nothing past the handlers reads the proto again.

namespace ringattn::coordinator {

// A Forward header, checked. Glossary: B batch, H query heads, Hkv key/value
// heads, S sequence length, D head dim.
struct ForwardSpec {
  kernels::DType dtype = kernels::DType::kF32;
  int64_t batch = 0;           // B
  int64_t heads = 0;           // H, a multiple of Hkv
  int64_t kv_heads = 0;        // Hkv
  int64_t seq_len = 0;         // S
  int64_t head_dim = 0;        // D
  kernels::LayerConfig layer;  // Defaults filled in.
  // As the client sent it: every rank gets it unchanged and checks it again.
  attention::v1::LayerConfig wire_layer;
};

// INVALID_ARGUMENT naming the field for a bad header; RESOURCE_EXHAUSTED if
// q, k and v would take more than `max_call_bytes`.
absl::StatusOr<ForwardSpec> ForwardSpecFromHeader(const attention::v1::ForwardHeader& header,
                                                  uint64_t max_call_bytes);

// What every worker is told about one ring call of `session` (its place in
// the global order, and whether the batch holds vision tokens, come with the
// commit). Backward sends the same as the session's forward.
worker::v1::ShardCall ShardCallFor(const ForwardSpec& spec, const std::string& session,
                                   const batch::ShardLayout& layout, uint64_t generation,
                                   absl::Duration ring_timeout);

// Whom per-client limits count a call against: "id:" and the identity its
// credentials prove (token or certificate name), else "peer:" and its host.
std::string ClientKey(const grpc::ServerContext& context);

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_REQUEST_CONVERT_H_
