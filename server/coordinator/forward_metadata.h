#ifndef RINGATTN_SERVER_COORDINATOR_FORWARD_METADATA_H_
#define RINGATTN_SERVER_COORDINATOR_FORWARD_METADATA_H_

#include "absl/status/statusor.h"
#include "server/batch/batch_prep.h"
#include "server/batch/shard_layout.h"
#include "server/coordinator/request_convert.h"
#include "server/coordinator/shard_io.h"

// The per-token metadata of a Forward stream: the explicit tensors the
// kernels read (doc_ids, vision_groups, padding_mask) and the Hugging Face
// ones the coordinator derives them from (attention_mask,
// mm_token_type_ids, packed_seq_ids), all optional (docs/batch.md).

namespace ringattn::coordinator {

// Declares them to `inputs`, each kept whole: [B, S], attention_mask also
// [B, 1, S, S].
void ExpectForwardMetadata(const ForwardSpec& spec, ClientInputs& inputs);

// What the client sent, derived, checked and padded to P (SPEC §1):
// INVALID_ARGUMENT naming the field when two forms disagree, or when a 4-D
// attention_mask is not exactly the layer's mask.
absl::StatusOr<batch::AttentionMetadata> ForwardMetadata(const ForwardSpec& spec,
                                                         const batch::ShardLayout& layout,
                                                         ClientInputs& inputs);

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_FORWARD_METADATA_H_
