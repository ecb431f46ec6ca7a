#ifndef RINGATTN_SERVER_COORDINATOR_LAYOUT_CHOICE_H_
#define RINGATTN_SERVER_COORDINATOR_LAYOUT_CHOICE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "attention/v1/attention_service.pb.h"
#include "kernels/layer_config.h"
#include "server/batch/shard_layout.h"

// The layout of one call (docs/ring.md#layouts). The coordinator shards and
// gathers every tensor itself, so the layout is its choice per call,
// invisible to the client: a caller may force one, else
// - contiguous for causal sliding layers whose window fits in a shard
//   (W <= L) or ends the exchanges early (ceil(W / L) < cp - 1): a rank
//   needs only the previous shards, the work is already about even, and a
//   balanced layout would have to go all the way round;
// - zigzag for the other causal layers (full layers above all), where
//   contiguous shards leave the last rank about cp times the first's work;
// - contiguous for non-causal layers, already balanced.

namespace ringattn::coordinator {

// The layout kind for a call of `layer` with S = seq_len on cp ranks.
batch::LayoutKind ChooseLayoutKind(attention::v1::ShardLayout requested,
                                   const kernels::LayerConfig& layer, int64_t seq_len, int cp);

// The call's layout (L = P / cp). INVALID_ARGUMENT for an unknown requested
// layout.
absl::StatusOr<batch::ShardLayout> LayoutForCall(attention::v1::ShardLayout requested,
                                                 const kernels::LayerConfig& layer, int64_t seq_len,
                                                 int cp);

// The wire name of a layout kind.
attention::v1::ShardLayout LayoutToProto(batch::LayoutKind kind);

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_LAYOUT_CHOICE_H_
