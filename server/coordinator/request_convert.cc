#include "server/coordinator/request_convert.h"

#include <optional>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/status_macros.h"
#include "kernels/validate.h"
#include "proto/wire/dtype.h"
#include "proto/wire/security.h"
#include "server/common/layer_from_proto.h"

namespace ringattn::coordinator {
namespace {

constexpr int64_t kMaxDim = int64_t{1} << 31;
// At most what every worker accepts (its request_convert.cc): a call the
// coordinator takes must never be refused by a rank.
constexpr int64_t kMaxBatch = int64_t{1} << 20;
constexpr int64_t kMaxHeads = 4096;

}  // namespace

absl::StatusOr<ForwardSpec> ForwardSpecFromHeader(const attention::v1::ForwardHeader& h,
                                                  uint64_t max_call_bytes) {
  RINGATTN_ASSIGN_OR_RETURN(const kernels::DType dtype, wire::ParseDType(h.dtype()));
  for (auto [name, v, max] : {std::tuple{"batch", h.batch(), kMaxBatch},
                              {"heads", h.heads(), kMaxHeads},
                              {"kv_heads", h.kv_heads(), kMaxHeads},
                              {"seq_len", h.seq_len(), kMaxDim},
                              {"head_dim", h.head_dim(), kMaxDim}}) {
    if (v < 1 || v > max) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be in [1, ", max, "], got ", v));
    }
  }
  if (h.heads() % h.kv_heads() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heads (", h.heads(), ") must be a multiple of kv_heads (", h.kv_heads(), ")"));
  }
  if (h.head_dim() > kernels::kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", h.head_dim(), " is not supported (at most ", kernels::kMaxHeadDim, ")"));
  }
  RINGATTN_ASSIGN_OR_RETURN(const kernels::LayerConfig layer,
                            server::LayerFromProto(h.layer(), h.head_dim()));
  const long double bytes = static_cast<long double>(h.batch()) * h.seq_len() * h.head_dim() *
                            (h.heads() + 2.0L * h.kv_heads()) * kernels::DTypeSize(dtype);
  if (bytes > static_cast<long double>(max_call_bytes)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "q, k and v take %.0Lf bytes, over this coordinator's limit of %d bytes per call", bytes,
        max_call_bytes));
  }
  return ForwardSpec{.dtype = dtype,
                     .batch = h.batch(),
                     .heads = h.heads(),
                     .kv_heads = h.kv_heads(),
                     .seq_len = h.seq_len(),
                     .head_dim = h.head_dim(),
                     .layer = layer,
                     .wire_layer = h.layer()};
}

worker::v1::ShardCall ShardCallFor(const ForwardSpec& spec, const std::string& session,
                                   const batch::ShardLayout& layout, uint64_t generation,
                                   absl::Duration ring_timeout) {
  worker::v1::ShardCall call;
  call.set_session(session);
  *call.mutable_layer() = spec.wire_layer;
  call.set_dtype(wire::DTypeName(spec.dtype));
  call.set_batch(spec.batch);
  call.set_heads(spec.heads);
  call.set_kv_heads(spec.kv_heads);
  call.set_shard_len(layout.shard_len());
  call.set_head_dim(spec.head_dim);
  call.set_timeout_seconds(absl::ToDoubleSeconds(ring_timeout));
  call.set_generation(generation);
  call.set_layout(layout.kind() == batch::LayoutKind::kZigzag
                      ? attention::v1::SHARD_LAYOUT_ZIGZAG
                      : attention::v1::SHARD_LAYOUT_CONTIGUOUS);
  return call;
}

std::string ClientKey(const grpc::ServerContext& context) {
  if (std::optional<std::string> id = wire::ProvenClientIdentity(context)) {
    return absl::StrCat("id:", *id);
  }
  // The peer's port is dropped: one client's connections share its limits.
  std::string peer = context.peer();
  const size_t colon = peer.rfind(':');
  if (colon != std::string::npos && !absl::StartsWith(peer, "unix:")) peer.resize(colon);
  return absl::StrCat("peer:", peer);
}

}  // namespace ringattn::coordinator
