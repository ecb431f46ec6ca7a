#include "server/coordinator/layout_choice.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::coordinator {

batch::LayoutKind ChooseLayoutKind(attention::v1::ShardLayout requested,
                                   const kernels::LayerConfig& layer, int64_t seq_len, int cp) {
  if (requested == attention::v1::SHARD_LAYOUT_CONTIGUOUS) return batch::LayoutKind::kContiguous;
  if (requested == attention::v1::SHARD_LAYOUT_ZIGZAG) return batch::LayoutKind::kZigzag;
  if (cp < 2 || !layer.causal) return batch::LayoutKind::kContiguous;
  if (layer.kind == kernels::LayerKind::kSliding) {
    const int64_t L = batch::PaddedLength(seq_len, cp) / cp;
    // ceil(W / L) without W + L - 1, which overflows for W near INT64_MAX.
    const int64_t back = layer.window / L + (layer.window % L != 0 ? 1 : 0);
    if (layer.window <= L || back < cp - 1) return batch::LayoutKind::kContiguous;
  }
  return batch::LayoutKind::kZigzag;
}

absl::StatusOr<batch::ShardLayout> LayoutForCall(attention::v1::ShardLayout requested,
                                                 const kernels::LayerConfig& layer, int64_t seq_len,
                                                 int cp) {
  if (!attention::v1::ShardLayout_IsValid(requested)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown layout ", requested));
  }
  return batch::ShardLayout::Make(ChooseLayoutKind(requested, layer, seq_len, cp), seq_len,
                                  batch::PaddedLength(seq_len, cp) / cp, cp);
}

attention::v1::ShardLayout LayoutToProto(batch::LayoutKind kind) {
  return kind == batch::LayoutKind::kZigzag ? attention::v1::SHARD_LAYOUT_ZIGZAG
                                            : attention::v1::SHARD_LAYOUT_CONTIGUOUS;
}

}  // namespace ringattn::coordinator
