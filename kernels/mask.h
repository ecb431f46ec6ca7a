#ifndef RINGATTN_KERNELS_MASK_H_
#define RINGATTN_KERNELS_MASK_H_

#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/layer_config.h"

namespace ringattn::kernels {

// The position-dependent part of a layer's mask, flattened for kernels.
struct MaskRule {
  bool causal = true;
  bool windowed = false;  // Sliding layer: q - k < window.
  int64_t window = 0;
  bool vision_bidirectional = false;  // Only ever set on windowed layers.
};

inline MaskRule MaskRuleFor(const LayerConfig& layer) {
  MaskRule rule;
  rule.causal = layer.causal;
  rule.windowed = layer.kind == LayerKind::kSliding;
  rule.window = rule.windowed ? layer.window : 0;
  rule.vision_bidirectional = rule.windowed && layer.vision_bidirectional;
  return rule;
}

// Per-token metadata the mask reads (SPEC §2), at one global position.
struct TokenInfo {
  int64_t pos;     // Global position in the padded sequence.
  int32_t doc;     // Document id; <= 0 means padding / no document.
  int32_t vision;  // Vision group id; -1 for text and padding.
  bool padding;    // True for padding tokens.
};

// Whether query `q` may attend to key `k` (SPEC §2, evaluated in global
// coordinates). The vision rule overrides causality and the window but
// never the document or padding rules.
RINGATTN_HOST_DEVICE bool Allowed(const MaskRule& rule, const TokenInfo& q, const TokenInfo& k) {
  bool allowed = !rule.causal || k.pos <= q.pos;
  if (rule.windowed) {
    allowed = allowed && (q.pos - k.pos < rule.window);
    if (rule.vision_bidirectional) {
      allowed = allowed || (q.vision >= 0 && q.vision == k.vision);
    }
  }
  allowed = allowed && q.doc == k.doc && q.doc > 0;
  return allowed && !q.padding && !k.padding;
}

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_MASK_H_
