#include "server/coordinator/forward_metadata.h"

#include <string>
#include <vector>

#include "kernels/mask.h"
#include "kernels/status_macros.h"
#include "server/batch/hf_metadata.h"

namespace ringattn::coordinator {

void ExpectForwardMetadata(const ForwardSpec& s, ClientInputs& inputs) {
  const std::vector<int64_t> bs = {s.batch, s.seq_len};
  inputs.Keep("doc_ids", "INT32", bs);
  inputs.Keep("vision_groups", "INT32", bs);
  inputs.Keep("padding_mask", "BOOL", bs);
  inputs.KeepOneOf("attention_mask", {"BOOL", "INT32", "INT64", "FP32", "BF16", "FP16"},
                   {bs, {s.batch, 1, s.seq_len, s.seq_len}});
  inputs.KeepOneOf("mm_token_type_ids", {"INT32", "INT64"}, {bs});
  inputs.KeepOneOf("packed_seq_ids", {"INT32", "INT64"}, {bs});
}

absl::StatusOr<batch::AttentionMetadata> ForwardMetadata(const ForwardSpec& s,
                                                         const batch::ShardLayout& layout,
                                                         ClientInputs& inputs) {
  batch::MetadataInputs in{.padding_mask = inputs.TakeTensor("padding_mask"),
                           .doc_ids = inputs.TakeTensor("doc_ids"),
                           .vision_groups = inputs.TakeTensor("vision_groups"),
                           .attention_mask = inputs.TakeTensor("attention_mask"),
                           .mm_token_type_ids = inputs.TakeTensor("mm_token_type_ids"),
                           .packed_seq_ids = inputs.TakeTensor("packed_seq_ids")};
  RINGATTN_ASSIGN_OR_RETURN(batch::AttentionMetadata metadata,
                            batch::DeriveMetadata(s.batch, s.seq_len, layout.padded_len(), in));
  if (in.attention_mask && in.attention_mask->shape.size() == 4) {
    RINGATTN_RETURN_IF_ERROR(
        batch::CheckDenseMask(*in.attention_mask, metadata, kernels::MaskRuleFor(s.layer)));
  }
  return metadata;
}

}  // namespace ringattn::coordinator
