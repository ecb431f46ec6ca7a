#include "client/synthetic_inputs.h"

#include "proto/wire/dtype.h"

namespace ringattn::client {

attention::v1::LayerConfig ToWire(const kernels::LayerConfig& layer) {
  attention::v1::LayerConfig w;
  w.set_kind(layer.kind == kernels::LayerKind::kSliding ? attention::v1::LayerConfig::KIND_SLIDING
                                                        : attention::v1::LayerConfig::KIND_FULL);
  w.set_window(layer.window);
  w.set_scale(layer.scale);
  w.set_causal(layer.causal);
  w.set_vision_bidirectional(layer.vision_bidirectional);
  w.set_dropout(layer.dropout);
  return w;
}

std::unique_ptr<EncodedBatch> EncodeBatch(const kernels::reference::SyntheticBatch& b,
                                          const kernels::LayerConfig& layer, bool with_metadata) {
  auto e = std::make_unique<EncodedBatch>();
  e->q = kernels::reference::Encode(b.q, b.dtype);
  e->k = kernels::reference::Encode(b.k, b.dtype);
  e->v = kernels::reference::Encode(b.v, b.dtype);
  e->dout = kernels::reference::Encode(b.dout, b.dtype);
  e->padding = b.padding;
  ForwardInputs& in = e->in;
  in.dtype = wire::DTypeName(b.dtype);
  in.batch = b.shape.batch;
  in.heads = b.shape.heads;
  in.kv_heads = b.shape.kv_heads;
  in.seq_len = b.shape.seq_len;
  in.head_dim = b.shape.head_dim;
  in.q = std::as_bytes(std::span(e->q));
  in.k = std::as_bytes(std::span(e->k));
  in.v = std::as_bytes(std::span(e->v));
  if (with_metadata) {
    in.doc_ids = std::span<const int32_t>(b.doc);
    in.vision_groups = std::span<const int32_t>(b.vision);
    in.padding_mask = std::span<const uint8_t>(e->padding);
  }
  in.layer = ToWire(layer);
  return e;
}

}  // namespace ringattn::client
