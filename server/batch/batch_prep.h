#ifndef RINGATTN_SERVER_BATCH_BATCH_PREP_H_
#define RINGATTN_SERVER_BATCH_BATCH_PREP_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "server/batch/host_tensor.h"
#include "server/batch/shard_layout.h"

// Batch preparation and contiguous sharding (SPEC §1): the coordinator's
// job before any attention runs. Glossary: B batch, S sequence length, P
// padded length (next multiple of 2 * cp), L = P / cp shard length.

namespace ringattn::batch {

struct BatchInputs {
  std::optional<HostTensor> input_ids;          // [B, S] integer
  std::optional<HostTensor> inputs_embeds;      // [B, S, E]
  std::optional<HostTensor> attention_mask;     // [B, S] or [B, 1, S, S]; nonzero = real
  std::optional<HostTensor> position_ids;       // [B, S] or [3, B, S] (multimodal RoPE)
  std::optional<HostTensor> labels;             // [B, S]
  std::optional<HostTensor> loss_mask;          // [B, S]
  std::optional<HostTensor> packed_seq_ids;     // [B, S] 1-based documents, 0 = padding
  std::optional<HostTensor> mm_token_type_ids;  // [B, S] 0 text, 1 image, 2 video
  int64_t pad_token_id = 0;
};

// Every sequence tensor padded to P (or, after ShardFor, sliced to one
// rank's L). Metadata is always present; the rest as given.
struct PreparedBatch {
  int64_t batch = 0;       // B
  int64_t seq_len = 0;     // S before padding
  int64_t padded_len = 0;  // P
  int cp = 1;
  int rank = -1;                                // -1 for the whole batch, else the shard's rank
  std::optional<HostTensor> input_ids;          // [B, P] pad -> pad_token_id
  std::optional<HostTensor> inputs_embeds;      // [B, P, E] pad -> 0
  HostTensor padding_mask;                      // [B, P] U8, 1 = padding
  HostTensor position_ids;                      // [B, P] or [3, B, P], continued
  std::optional<HostTensor> labels;             // [B, P] pad -> -100
  std::optional<HostTensor> loss_mask;          // [B, P] pad -> 0
  std::optional<HostTensor> mm_token_type_ids;  // [B, P] pad -> 0
  HostTensor doc_ids;                           // [B, P] I32, pad -> 0
  HostTensor vision_groups;                     // [B, P] I32, -1 = none
};

// The per-token metadata the attention mask reads (SPEC §2), over the padded
// sequence.
struct AttentionMetadata {
  HostTensor padding_mask;   // [B, P] U8, 1 = padding
  HostTensor doc_ids;        // [B, P] I32, 0 = padding
  HostTensor vision_groups;  // [B, P] I32, -1 = no image block
  bool has_vision = false;   // Some token is in an image block.
};

// Rules 5 and 7 for the mask metadata, from the [B, S] tensors as given
// (padding_mask U8, doc_ids and vision_groups I32) or absent: no padding
// mask means no padding; no document ids, 1 for real tokens and 0 for
// padding (synthesized before padding); no vision groups, -1 everywhere.
// Each is then padded to `padded_len`: padding 1, documents 0, vision -1.
absl::StatusOr<AttentionMetadata> PadMetadata(int64_t batch, int64_t seq_len, int64_t padded_len,
                                              std::optional<HostTensor> padding_mask,
                                              std::optional<HostTensor> doc_ids,
                                              std::optional<HostTensor> vision_groups);

// SPEC §1 rules 1-7. INVALID_ARGUMENT naming the field for bad input.
absl::StatusOr<PreparedBatch> PrepareBatch(const BatchInputs& inputs, int cp);

// Rule 8: rank r's contiguous slice [r * L, (r + 1) * L) of every sequence
// tensor.
absl::StatusOr<PreparedBatch> ShardFor(const PreparedBatch& whole, int rank);

// The inverse of sharding: shards of ranks 0..cp-1 back into one batch.
absl::StatusOr<PreparedBatch> Reassemble(const std::vector<PreparedBatch>& shards);

// A padded-length tensor cut back to the caller's S along `seq_dim`.
absl::StatusOr<HostTensor> StripPadding(const HostTensor& t, size_t seq_dim, int64_t seq_len);

}  // namespace ringattn::batch

#endif  // RINGATTN_SERVER_BATCH_BATCH_PREP_H_
