#ifndef RINGATTN_SERVER_COMMON_LAYER_CONFIG_H_
#define RINGATTN_SERVER_COMMON_LAYER_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "attention/v1/attention_service.pb.h"
#include "kernels/dtype.h"
#include "kernels/layer_config.h"

namespace ringattn::server {

// The wire layer config with its defaults filled in (scale 1/sqrt(D),
// causal, vision bidirectional), validated: INVALID_ARGUMENT naming the field.
absl::StatusOr<kernels::LayerConfig> LayerFromProto(const attention::v1::LayerConfig& layer,
                                                    int64_t head_dim);

// FP32 / BF16 / FP16; anything else is not an attention dtype.
absl::StatusOr<kernels::DType> ParseDType(const std::string& dtype);

// For dtypes already checked with ParseDType.
kernels::DType DTypeFromWire(const std::string& dtype);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_LAYER_CONFIG_H_
