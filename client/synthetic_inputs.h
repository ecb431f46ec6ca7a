#ifndef RINGATTN_CLIENT_SYNTHETIC_INPUTS_H_
#define RINGATTN_CLIENT_SYNTHETIC_INPUTS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "attention/v1/attention_service.pb.h"
#include "client/attention_client.h"
#include "kernels/layer_config.h"
#include "kernels/reference/synthetic_batch.h"

namespace ringattn::client {

// A layer config as the wire carries it (scale and flags always explicit).
attention::v1::LayerConfig ToWire(const kernels::LayerConfig& layer);

// A synthetic batch encoded as client inputs; owns the bytes `in` views.
struct EncodedBatch {
  std::vector<uint8_t> q, k, v, dout, padding;
  ForwardInputs in;
};

// with_metadata: also send the batch's document ids, vision groups and
// padding mask (else the service's defaults apply).
std::unique_ptr<EncodedBatch> EncodeBatch(const kernels::reference::SyntheticBatch& batch,
                                          const kernels::LayerConfig& layer,
                                          bool with_metadata = true);

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_SYNTHETIC_INPUTS_H_
