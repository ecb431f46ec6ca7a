#include "server/common/layer_from_proto.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/validate.h"
#include "kernels/status_macros.h"

namespace ringattn::server {

absl::StatusOr<kernels::LayerConfig> LayerFromProto(const attention::v1::LayerConfig& layer,
                                                    int64_t head_dim) {
  kernels::LayerConfig out;
  switch (layer.kind()) {
    case attention::v1::LayerConfig::KIND_FULL:
      out.kind = kernels::LayerKind::kFull;
      break;
    case attention::v1::LayerConfig::KIND_SLIDING:
      out.kind = kernels::LayerKind::kSliding;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("layer.kind ", static_cast<int>(layer.kind()), " is unknown"));
  }
  out.window = layer.window();
  out.scale = layer.has_scale() ? layer.scale()
                                : 1.0f / std::sqrt(static_cast<float>(head_dim > 0 ? head_dim : 1));
  out.causal = layer.has_causal() ? layer.causal() : true;
  out.vision_bidirectional = layer.has_vision_bidirectional() ? layer.vision_bidirectional() : true;
  out.dropout = layer.dropout();
  RINGATTN_RETURN_IF_ERROR(kernels::ValidateLayer(out));
  return out;
}

}  // namespace ringattn::server
