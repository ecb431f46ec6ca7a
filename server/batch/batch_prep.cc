#include "server/batch/batch_prep.h"

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"
#include "server/batch/hf_metadata.h"

namespace ringattn::batch {
namespace {

// Every sequence tensor of a prepared batch, as members.
constexpr std::optional<HostTensor> PreparedBatch::*kOptionalTensors[] = {
    &PreparedBatch::input_ids, &PreparedBatch::inputs_embeds, &PreparedBatch::labels,
    &PreparedBatch::loss_mask, &PreparedBatch::mm_token_type_ids};
constexpr HostTensor PreparedBatch::*kTensors[] = {
    &PreparedBatch::padding_mask, &PreparedBatch::doc_ids, &PreparedBatch::vision_groups,
    &PreparedBatch::position_ids};

using TensorFn = std::function<absl::Status(
    HostTensor& out, const std::vector<const HostTensor*>& from, size_t seq_dim)>;

// Applies fn(member of `out`, the same member of each of `from`, its
// sequence dimension) to every sequence tensor present.
absl::Status ForEachTensor(PreparedBatch& out, const std::vector<const PreparedBatch*>& from,
                           const TensorFn& fn) {
  for (auto member : kOptionalTensors) {
    if (!(out.*member).has_value()) continue;
    std::vector<const HostTensor*> parts;
    for (const PreparedBatch* p : from) parts.push_back(&*(p->*member));
    RINGATTN_RETURN_IF_ERROR(fn(*(out.*member), parts, 1));
  }
  for (auto member : kTensors) {
    std::vector<const HostTensor*> parts;
    for (const PreparedBatch* p : from) parts.push_back(&(p->*member));
    // Multimodal RoPE positions [3, B, P] keep the sequence in dim 2.
    const size_t dim =
        member == &PreparedBatch::position_ids && out.position_ids.shape.size() == 3 ? 2 : 1;
    RINGATTN_RETURN_IF_ERROR(fn(out.*member, parts, dim));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<AttentionMetadata> PadMetadata(int64_t batch, int64_t seq_len, int64_t padded_len,
                                              std::optional<HostTensor> padding_mask,
                                              std::optional<HostTensor> doc_ids,
                                              std::optional<HostTensor> vision_groups) {
  const int64_t n = batch * seq_len;
  AttentionMetadata out;
  if (!padding_mask) padding_mask = HostTensor::Zeros(ElemType::kU8, {batch, seq_len});
  if (!doc_ids) {
    doc_ids = HostTensor::Zeros(ElemType::kI32, {batch, seq_len});
    for (int64_t i = 0; i < n; ++i) doc_ids->SetInt(i, padding_mask->IntAt(i) != 0 ? 0 : 1);
  }
  if (vision_groups) {
    for (int64_t i = 0; i < n && !out.has_vision; ++i)
      out.has_vision = vision_groups->IntAt(i) >= 0;
  } else {
    vision_groups = HostTensor::Zeros(ElemType::kI32, {batch, seq_len});
    for (int64_t i = 0; i < n; ++i) vision_groups->SetInt(i, -1);
  }
  RINGATTN_ASSIGN_OR_RETURN(out.padding_mask, PadDim(*padding_mask, 1, padded_len, 1));
  RINGATTN_ASSIGN_OR_RETURN(out.doc_ids, PadDim(*doc_ids, 1, padded_len, 0));
  RINGATTN_ASSIGN_OR_RETURN(out.vision_groups, PadDim(*vision_groups, 1, padded_len, -1));
  return out;
}

absl::StatusOr<PreparedBatch> PrepareBatch(const BatchInputs& in, int cp) {
  if (cp < 1) return absl::InvalidArgumentError(absl::StrCat("cp must be >= 1, got ", cp));
  // Rule 2: exactly one primary sequence tensor defines B and S.
  if (in.input_ids.has_value() == in.inputs_embeds.has_value()) {
    return absl::InvalidArgumentError(in.input_ids.has_value()
                                          ? "give input_ids or inputs_embeds, not both"
                                          : "one of input_ids or inputs_embeds is required");
  }
  const HostTensor& primary = in.input_ids.has_value() ? *in.input_ids : *in.inputs_embeds;
  if (in.input_ids.has_value()) {
    if (primary.shape.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_ids must be [B, S], got ", ShapeString(primary.shape)));
    }
    RINGATTN_RETURN_IF_ERROR(ExpectInteger("input_ids", primary));
  } else if (primary.shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs_embeds must be [B, S, E], got ", ShapeString(primary.shape)));
  }
  const int64_t B = primary.shape[0];
  const int64_t S = primary.shape[1];
  if (B < 1 || S < 1) return absl::InvalidArgumentError("batch and sequence must be non-empty");
  RINGATTN_RETURN_IF_ERROR(
      ExpectShape(in.input_ids ? "input_ids" : "inputs_embeds", primary, primary.shape));
  const std::vector<int64_t> bs = {B, S};

  PreparedBatch out;
  out.batch = B;
  out.seq_len = S;
  out.cp = cp;
  out.padded_len = PaddedLength(S, cp);

  // Rule 3: position ids, injected as 0..S-1 when absent.
  if (in.position_ids.has_value()) {
    const HostTensor& pos = *in.position_ids;
    const bool rope3 = pos.shape.size() == 3;
    RINGATTN_RETURN_IF_ERROR(
        ExpectShape("position_ids", pos, rope3 ? std::vector<int64_t>{3, B, S} : bs));
    RINGATTN_RETURN_IF_ERROR(ExpectInteger("position_ids", pos));
    out.position_ids = HostTensor::Zeros(ElemType::kI64, pos.shape);
    for (int64_t i = 0; i < pos.NumElements(); ++i) out.position_ids.SetInt(i, pos.IntAt(i));
  } else {
    out.position_ids = HostTensor::Zeros(ElemType::kI64, bs);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < S; ++i) out.position_ids.SetInt(b * S + i, i);
    }
  }

  // Rule 4: labels, falling back to the loss mask.
  if (!in.labels.has_value() && !in.loss_mask.has_value()) {
    return absl::InvalidArgumentError("neither labels nor loss_mask is given; one is required");
  }
  if (in.labels.has_value()) {
    RINGATTN_RETURN_IF_ERROR(ExpectShape("labels", *in.labels, bs));
    RINGATTN_RETURN_IF_ERROR(ExpectInteger("labels", *in.labels));
    out.labels = in.labels;
  }
  if (in.loss_mask.has_value()) {
    RINGATTN_RETURN_IF_ERROR(ExpectShape("loss_mask", *in.loss_mask, bs));
    out.loss_mask = in.loss_mask;
  }

  // Rules 1, 5 and 6: the mask's metadata, derived as for a Forward.
  RINGATTN_ASSIGN_OR_RETURN(AttentionMetadata metadata,
                            DeriveMetadata(B, S, out.padded_len,
                                           {.attention_mask = in.attention_mask,
                                            .mm_token_type_ids = in.mm_token_type_ids,
                                            .packed_seq_ids = in.packed_seq_ids}));
  if (in.mm_token_type_ids.has_value()) out.mm_token_type_ids = in.mm_token_type_ids;

  if (in.input_ids.has_value()) out.input_ids = in.input_ids;
  if (in.inputs_embeds.has_value()) out.inputs_embeds = in.inputs_embeds;

  // Rule 7: pad every sequence tensor on the right to P.
  const int64_t P = out.padded_len;
  auto pad = [&](std::optional<HostTensor>& t, size_t dim, int64_t fill) -> absl::Status {
    if (!t.has_value()) return absl::OkStatus();
    RINGATTN_ASSIGN_OR_RETURN(*t, PadDim(*t, dim, P, fill));
    return absl::OkStatus();
  };
  RINGATTN_RETURN_IF_ERROR(pad(out.input_ids, 1, in.pad_token_id));
  RINGATTN_RETURN_IF_ERROR(pad(out.inputs_embeds, 1, 0));
  RINGATTN_RETURN_IF_ERROR(pad(out.labels, 1, -100));
  RINGATTN_RETURN_IF_ERROR(pad(out.loss_mask, 1, 0));
  RINGATTN_RETURN_IF_ERROR(pad(out.mm_token_type_ids, 1, 0));
  out.padding_mask = std::move(metadata.padding_mask);
  out.doc_ids = std::move(metadata.doc_ids);
  out.vision_groups = std::move(metadata.vision_groups);
  // Positions continue last + 1, last + 2, ... per row (and per section).
  const bool rope3 = out.position_ids.shape.size() == 3;
  RINGATTN_ASSIGN_OR_RETURN(out.position_ids, PadDim(out.position_ids, rope3 ? 2 : 1, P, 0));
  const int64_t rows = rope3 ? 3 * B : B;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t last = out.position_ids.IntAt(r * P + S - 1);
    for (int64_t i = S; i < P; ++i) out.position_ids.SetInt(r * P + i, last + (i - S + 1));
  }
  return out;
}

absl::StatusOr<PreparedBatch> ShardFor(const PreparedBatch& whole, int rank) {
  if (whole.rank != -1) return absl::InvalidArgumentError("batch is already a shard");
  if (rank < 0 || rank >= whole.cp) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is not in [0, ", whole.cp, ")"));
  }
  const ShardLayout layout(whole.seq_len, whole.cp);
  PreparedBatch shard = whole;
  shard.rank = rank;
  RINGATTN_RETURN_IF_ERROR(ForEachTensor(
      shard, {&whole}, [&](HostTensor& t, const std::vector<const HostTensor*>& src, size_t dim) {
        RINGATTN_ASSIGN_OR_RETURN(t, SliceDim(*src[0], dim, layout.Begin(rank), layout.End(rank)));
        return absl::OkStatus();
      }));
  return shard;
}

absl::StatusOr<PreparedBatch> Reassemble(const std::vector<PreparedBatch>& shards) {
  if (shards.empty()) return absl::InvalidArgumentError("no shards");
  const int cp = shards[0].cp;
  if (static_cast<int>(shards.size()) != cp) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", shards.size(), " shards of a ", cp, "-rank batch"));
  }
  std::vector<const PreparedBatch*> from;
  for (int r = 0; r < cp; ++r) {
    if (shards[r].rank != r) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", r, " is rank ", shards[r].rank));
    }
    from.push_back(&shards[r]);
  }
  PreparedBatch whole = shards[0];
  whole.rank = -1;
  RINGATTN_RETURN_IF_ERROR(ForEachTensor(
      whole, from, [&](HostTensor& t, const std::vector<const HostTensor*>& src, size_t dim) {
        std::vector<HostTensor> parts;
        for (const HostTensor* p : src) parts.push_back(*p);
        RINGATTN_ASSIGN_OR_RETURN(t, ConcatDim(parts, dim));
        return absl::OkStatus();
      }));
  return whole;
}

absl::StatusOr<HostTensor> StripPadding(const HostTensor& t, size_t seq_dim, int64_t seq_len) {
  return SliceDim(t, seq_dim, 0, seq_len);
}

}  // namespace ringattn::batch
