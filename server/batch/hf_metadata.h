#ifndef RINGATTN_SERVER_BATCH_HF_METADATA_H_
#define RINGATTN_SERVER_BATCH_HF_METADATA_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/mask.h"
#include "server/batch/batch_prep.h"
#include "server/batch/host_tensor.h"

// The attention mask's metadata (SPEC §1 rules 1, 5, 6) from a batch as
// training code has it: Hugging Face's attention_mask, mm_token_type_ids and
// packed_seq_ids, alone or next to the explicit padding_mask, doc_ids and
// vision_groups the kernels read. Glossary: B batch, S sequence length, P
// padded length.
//
// attention_mask values: a 2-D mask [B, S] marks real tokens with any
// nonzero value. A 4-D mask [B, 1, S, S] says whether query q attends key
// k: integer and BOOL masks attend where nonzero; float masks (FP32, BF16,
// FP16) are additive biases, 0 attends and <= -1e4 (-inf included) is
// masked, any other value is a bias no mask represents (INVALID_ARGUMENT).

namespace ringattn::batch {

// A call's metadata as its caller gave it, each [B, S] unless noted; any
// may be absent.
struct MetadataInputs {
  std::optional<HostTensor> padding_mask = std::nullopt;       // U8, nonzero = padding
  std::optional<HostTensor> doc_ids = std::nullopt;            // I32, 1-based, 0 = padding
  std::optional<HostTensor> vision_groups = std::nullopt;      // I32, -1 = none
  std::optional<HostTensor> attention_mask = std::nullopt;     // [B, S] or [B, 1, S, S], see above
  std::optional<HostTensor> mm_token_type_ids = std::nullopt;  // integer, 0 text, 1 image, 2 video
  std::optional<HostTensor> packed_seq_ids = std::nullopt;     // integer, 1-based, 0 = padding
};

// Rule 1: the padding mask [B, S] U8 (1 = padding) of an attention mask: a
// 2-D mask's zeros, or the masked diagonal of a 4-D one (a real token
// always attends itself).
absl::StatusOr<HostTensor> PaddingFromAttentionMask(const HostTensor& mask, int64_t batch,
                                                    int64_t seq_len);

// Rule 6: vision groups [B, S] I32 of token types [B, S]: every maximal run
// of image or video tokens that are not padding is a new group, numbered
// 0, 1, ... per row; everything else -1. INVALID_ARGUMENT naming the element
// for a type outside 0..2.
absl::StatusOr<HostTensor> VisionGroupsFromTokenTypes(const HostTensor& types,
                                                      const HostTensor& padding);

// The documents a 4-D mask [B, 1, S, S] implies without packed_seq_ids:
// consecutive real tokens are in one document when either attends the
// other, and padding (from `padding`, [B, S]) is document 0. Whether the
// whole mask agrees is CheckDenseMask's question.
absl::StatusOr<HostTensor> DocIdsFromDenseMask(const HostTensor& mask, const HostTensor& padding);

// All of the above, then PadMetadata to P. Where a Hugging Face input and
// its explicit counterpart are both given (attention_mask and padding_mask,
// packed_seq_ids and doc_ids, mm_token_type_ids and vision_groups) they
// must agree on every token, else INVALID_ARGUMENT naming both and the
// first [b, s] where they differ. Shapes and dtypes are checked here, each
// error naming its field.
absl::StatusOr<AttentionMetadata> DeriveMetadata(int64_t batch, int64_t seq_len, int64_t padded_len,
                                                 const MetadataInputs& in);

// A 4-D attention mask [B, 1, S, S] is accepted only when the mask the
// kernels compute (SPEC §2: `rule`, and the documents, padding and image
// blocks of `metadata`, padded from that mask) equals it for every real
// query. Rows of padding queries are not compared: the service answers them
// with zeros whatever the mask lets them see. INVALID_ARGUMENT names the
// first differing (b, q, k) and both values.
absl::Status CheckDenseMask(const HostTensor& mask, const AttentionMetadata& metadata,
                            const kernels::MaskRule& rule);

}  // namespace ringattn::batch

#endif  // RINGATTN_SERVER_BATCH_HF_METADATA_H_
