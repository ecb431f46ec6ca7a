#include "server/batch/hf_metadata.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace ringattn::batch {
namespace {

// An additive float mask's masked entries: HF fills them with the dtype's
// lowest value (or -inf); anything between that and 0 is a real bias.
constexpr double kMaskedBias = -1e4;

bool IsFloat(ElemType t) { return !IsIntegerType(t); }

// Whether element `i` of the 4-D mask [B, 1, S, S] attends.
absl::StatusOr<bool> DenseAttends(const HostTensor& mask, int64_t i) {
  if (!IsFloat(mask.type)) return mask.IntAt(i) != 0;
  const double v = mask.FloatAt(i);
  if (v == 0.0) return true;
  if (v <= kMaskedBias) return false;
  const int64_t S = mask.shape[3];
  const int64_t b = i / (S * S), q = (i / S) % S, k = i % S;
  return absl::InvalidArgumentError(absl::StrCat(
      "attention_mask[", b, ",0,", q, ",", k, "] is ", v,
      ": an additive float mask holds 0 (attend) or <= -1e4 / -inf (masked), not a bias"));
}

// The whole 4-D mask as 0/1 per element, every value checked once.
absl::StatusOr<std::vector<uint8_t>> DenseAttendsAll(const HostTensor& mask) {
  std::vector<uint8_t> out(static_cast<size_t>(mask.NumElements()));
  for (int64_t i = 0; i < mask.NumElements(); ++i) {
    RINGATTN_ASSIGN_OR_RETURN(const bool a, DenseAttends(mask, i));
    out[i] = a ? 1 : 0;
  }
  return out;
}

absl::Status ExpectMaskShape(const HostTensor& mask, int64_t B, int64_t S) {
  if (mask.shape.size() == 4) return ExpectShape("attention_mask", mask, {B, 1, S, S});
  return ExpectShape("attention_mask", mask, {B, S});
}

// Integer ids [B, S] as I32, each in [lo, 2^31).
absl::StatusOr<HostTensor> ToI32(const char* name, const HostTensor& t, int64_t B, int64_t S,
                                 int64_t lo) {
  RINGATTN_RETURN_IF_ERROR(ExpectShape(name, t, {B, S}));
  RINGATTN_RETURN_IF_ERROR(ExpectInteger(name, t));
  HostTensor out = HostTensor::Zeros(ElemType::kI32, {B, S});
  for (int64_t i = 0; i < B * S; ++i) {
    const int64_t v = t.IntAt(i);
    if (v < lo || v > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "[", i / S, ",", i % S, "] is ", v, ", outside [", lo, ", 2^31)"));
    }
    out.SetInt(i, v);
  }
  return out;
}

// INVALID_ARGUMENT at the first token where the derived and the explicit
// form of one piece of metadata differ (`same` compares two elements).
template <typename Same>
absl::Status Agree(const char* hf_name, const HostTensor& derived, const char* name,
                   const HostTensor& given, Same same) {
  const int64_t S = derived.shape[1];
  for (int64_t i = 0; i < derived.NumElements(); ++i) {
    if (!same(derived.IntAt(i), given.IntAt(i))) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " and ", hf_name, " disagree at [", i / S, ",", i % S, "]: ", name, " gives ",
          given.IntAt(i), ", ", hf_name, " implies ", derived.IntAt(i), "; send one of them"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HostTensor> PaddingFromAttentionMask(const HostTensor& mask, int64_t B, int64_t S) {
  RINGATTN_RETURN_IF_ERROR(ExpectMaskShape(mask, B, S));
  const bool four_d = mask.shape.size() == 4;
  HostTensor padding = HostTensor::Zeros(ElemType::kU8, {B, S});
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < S; ++i) {
      bool real;
      if (four_d) {
        RINGATTN_ASSIGN_OR_RETURN(real, DenseAttends(mask, (b * S + i) * S + i));
      } else {
        real = mask.FloatAt(b * S + i) != 0.0;
      }
      padding.SetInt(b * S + i, real ? 0 : 1);
    }
  }
  return padding;
}

absl::StatusOr<HostTensor> VisionGroupsFromTokenTypes(const HostTensor& types,
                                                      const HostTensor& padding) {
  const int64_t B = padding.shape[0];
  const int64_t S = padding.shape[1];
  RINGATTN_RETURN_IF_ERROR(ExpectShape("mm_token_type_ids", types, {B, S}));
  RINGATTN_RETURN_IF_ERROR(ExpectInteger("mm_token_type_ids", types));
  HostTensor vision = HostTensor::Zeros(ElemType::kI32, {B, S});
  for (int64_t b = 0; b < B; ++b) {
    int64_t group = -1;
    bool in_run = false;
    for (int64_t i = 0; i < S; ++i) {
      const int64_t at = b * S + i;
      const int64_t type = types.IntAt(at);
      if (type < 0 || type > 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("mm_token_type_ids[", b, ",", i, "] is ", type, "; must be 0, 1 or 2"));
      }
      const bool is_vision = (type == 1 || type == 2) && padding.IntAt(at) == 0;
      if (is_vision && !in_run) ++group;
      in_run = is_vision;
      vision.SetInt(at, is_vision ? group : -1);
    }
  }
  return vision;
}

absl::StatusOr<HostTensor> DocIdsFromDenseMask(const HostTensor& mask, const HostTensor& padding) {
  const int64_t B = padding.shape[0];
  const int64_t S = padding.shape[1];
  RINGATTN_RETURN_IF_ERROR(ExpectShape("attention_mask", mask, {B, 1, S, S}));
  HostTensor doc = HostTensor::Zeros(ElemType::kI32, {B, S});
  for (int64_t b = 0; b < B; ++b) {
    int32_t current = 0;
    for (int64_t i = 0; i < S; ++i) {
      if (padding.IntAt(b * S + i) != 0) continue;  // Document 0.
      bool joined = false;
      if (i > 0 && padding.IntAt(b * S + i - 1) == 0) {
        RINGATTN_ASSIGN_OR_RETURN(const bool back, DenseAttends(mask, (b * S + i) * S + i - 1));
        RINGATTN_ASSIGN_OR_RETURN(const bool ahead, DenseAttends(mask, (b * S + i - 1) * S + i));
        joined = back || ahead;
      }
      if (!joined) ++current;
      doc.SetInt(b * S + i, current);
    }
  }
  return doc;
}

absl::StatusOr<AttentionMetadata> DeriveMetadata(int64_t B, int64_t S, int64_t P,
                                                 const MetadataInputs& in) {
  const std::vector<int64_t> bs = {B, S};
  if (in.padding_mask) RINGATTN_RETURN_IF_ERROR(ExpectShape("padding_mask", *in.padding_mask, bs));
  if (in.doc_ids) RINGATTN_RETURN_IF_ERROR(ExpectShape("doc_ids", *in.doc_ids, bs));
  if (in.vision_groups) {
    RINGATTN_RETURN_IF_ERROR(ExpectShape("vision_groups", *in.vision_groups, bs));
  }

  // Rule 1.
  std::optional<HostTensor> padding = in.padding_mask;
  if (in.attention_mask) {
    RINGATTN_ASSIGN_OR_RETURN(HostTensor derived,
                              PaddingFromAttentionMask(*in.attention_mask, B, S));
    if (padding) {
      RINGATTN_RETURN_IF_ERROR(Agree("attention_mask", derived, "padding_mask", *padding,
                                     [](int64_t a, int64_t b) { return (a != 0) == (b != 0); }));
    }
    padding = std::move(derived);
  }
  const HostTensor no_padding = HostTensor::Zeros(ElemType::kU8, bs);
  const HostTensor& pad = padding ? *padding : no_padding;

  // Rule 5: documents as given, else as a 4-D mask implies them (PadMetadata
  // synthesizes the trivial map otherwise).
  std::optional<HostTensor> doc = in.doc_ids;
  if (in.packed_seq_ids) {
    RINGATTN_ASSIGN_OR_RETURN(HostTensor derived,
                              ToI32("packed_seq_ids", *in.packed_seq_ids, B, S, 0));
    if (doc) {
      RINGATTN_RETURN_IF_ERROR(Agree("packed_seq_ids", derived, "doc_ids", *doc,
                                     [](int64_t a, int64_t b) { return a == b; }));
    }
    doc = std::move(derived);
  } else if (!doc && in.attention_mask && in.attention_mask->shape.size() == 4) {
    RINGATTN_ASSIGN_OR_RETURN(doc, DocIdsFromDenseMask(*in.attention_mask, pad));
  }

  // Rule 6.
  std::optional<HostTensor> vision = in.vision_groups;
  if (in.mm_token_type_ids) {
    RINGATTN_ASSIGN_OR_RETURN(HostTensor derived,
                              VisionGroupsFromTokenTypes(*in.mm_token_type_ids, pad));
    if (vision) {
      RINGATTN_RETURN_IF_ERROR(Agree("mm_token_type_ids", derived, "vision_groups", *vision,
                                     [](int64_t a, int64_t b) { return a == b; }));
    }
    vision = std::move(derived);
  }
  return PadMetadata(B, S, P, std::move(padding), std::move(doc), std::move(vision));
}

absl::Status CheckDenseMask(const HostTensor& mask, const AttentionMetadata& m,
                            const kernels::MaskRule& rule) {
  const int64_t B = m.padding_mask.shape[0];
  const int64_t P = m.padding_mask.shape[1];
  if (mask.shape.size() != 4 || mask.shape[0] != B || mask.shape[1] != 1 ||
      mask.shape[2] != mask.shape[3] || mask.shape[2] > P) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention_mask has shape ", ShapeString(mask.shape), ", expected [", B, ",1,S,S]"));
  }
  const int64_t S = mask.shape[2];
  RINGATTN_ASSIGN_OR_RETURN(const std::vector<uint8_t> attends, DenseAttendsAll(mask));
  auto token = [&](int64_t b, int64_t i) {
    const int64_t at = b * P + i;
    return kernels::TokenInfo{.pos = i,
                              .doc = static_cast<int32_t>(m.doc_ids.IntAt(at)),
                              .vision = static_cast<int32_t>(m.vision_groups.IntAt(at)),
                              .padding = m.padding_mask.IntAt(at) != 0};
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t q = 0; q < S; ++q) {
      const kernels::TokenInfo tq = token(b, q);
      if (tq.padding) continue;
      for (int64_t k = 0; k < S; ++k) {
        const bool want = kernels::Allowed(rule, tq, token(b, k));
        const bool got = attends[(b * S + q) * S + k] != 0;
        if (want == got) continue;
        std::string hint;
        if (got && k > q && rule.causal) {
          hint = m.has_vision ? "" : "; for bidirectional image blocks send mm_token_type_ids";
        }
        return absl::InvalidArgumentError(absl::StrCat(
            "attention_mask[", b, ",0,", q, ",", k, "] ", got ? "attends" : "is masked",
            " but the layer's mask (causal, window, documents, padding, image blocks) ",
            want ? "attends" : "masks", " it: a 4-D mask must be exactly what those rules give",
            hint));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ringattn::batch
