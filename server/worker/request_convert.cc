#include "server/worker/request_convert.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "proto/wire/dtype.h"
#include "server/common/layer_from_proto.h"

namespace ringattn::worker {

absl::StatusOr<ShardSpec> ShardSpecFromCall(const worker::v1::ShardCall& c) {
  if (c.batch() < 1 || c.heads() < 1 || c.kv_heads() < 1 || c.shard_len() < 1 || c.head_dim() < 1 ||
      c.batch() > (1 << 20) || c.heads() > 4096 || c.kv_heads() > 4096 ||
      c.shard_len() > (int64_t{1} << 32) || c.head_dim() > 4096) {
    return absl::InvalidArgumentError("shard call sizes out of range");
  }
  ShardSpec spec;
  RINGATTN_ASSIGN_OR_RETURN(const kernels::DType dtype, wire::ParseDType(c.dtype()));
  RINGATTN_ASSIGN_OR_RETURN(spec.layer, server::LayerFromProto(c.layer(), c.head_dim()));
  spec.session = c.session();
  spec.shape = {.dtype = dtype,
                .batch = c.batch(),
                .heads = c.heads(),
                .kv_heads = c.kv_heads(),
                .q_len = c.shard_len(),
                .kv_len = c.shard_len(),
                .head_dim = c.head_dim()};
  switch (c.layout()) {
    case attention::v1::SHARD_LAYOUT_AUTO:  // From a coordinator that knows one layout.
    case attention::v1::SHARD_LAYOUT_CONTIGUOUS:
      spec.layout = batch::LayoutKind::kContiguous;
      break;
    case attention::v1::SHARD_LAYOUT_ZIGZAG:
      if (c.shard_len() % 2 != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("a zigzag layout needs an even shard length, got ", c.shard_len()));
      }
      spec.layout = batch::LayoutKind::kZigzag;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown shard layout ", c.layout()));
  }
  spec.generation = c.generation();
  spec.timeout = absl::Seconds(c.timeout_seconds() > 0 ? c.timeout_seconds() : 60);
  return spec;
}

std::vector<int64_t> QueryDims(const kernels::AttentionShape& s) {
  return {s.batch, s.heads, s.q_len, s.head_dim};
}

std::vector<int64_t> KvDims(const kernels::AttentionShape& s) {
  return {s.batch, s.kv_heads, s.kv_len, s.head_dim};
}

std::vector<int64_t> TokenDims(const kernels::AttentionShape& s) { return {s.batch, s.q_len}; }

ring::RingCall RingCallOf(const CommittedCall& call, const kernels::LayerConfig& layer) {
  ring::RingCall rc;
  rc.layer = layer;
  rc.batch_has_vision = call.batch_has_vision;
  rc.sequence = call.sequence;
  rc.generation = call.spec.generation;
  rc.timeout = call.spec.timeout;
  rc.layout = call.spec.layout;
  return rc;
}

}  // namespace ringattn::worker
