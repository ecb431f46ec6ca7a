#ifndef RINGATTN_SERVER_COMMON_LAYER_FROM_PROTO_H_
#define RINGATTN_SERVER_COMMON_LAYER_FROM_PROTO_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "attention/v1/attention_service.pb.h"
#include "kernels/layer_config.h"

namespace ringattn::server {

// The wire layer config with its defaults filled in (scale 1/sqrt(D),
// causal, vision bidirectional), validated: INVALID_ARGUMENT naming the field.
// Both daemons read it: the coordinator from the client's header, each
// worker from its shard call.
absl::StatusOr<kernels::LayerConfig> LayerFromProto(const attention::v1::LayerConfig& layer,
                                                    int64_t head_dim);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_LAYER_FROM_PROTO_H_
