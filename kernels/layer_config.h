#ifndef RINGATTN_KERNELS_LAYER_CONFIG_H_
#define RINGATTN_KERNELS_LAYER_CONFIG_H_

#include <cstdint>

namespace ringattn::kernels {

// Gemma 4 interleaves sliding-window and full (global) attention layers.
enum class LayerKind : uint8_t { kSliding, kFull };

// Attention configuration of one layer (SPEC §2).
struct LayerConfig {
  LayerKind kind = LayerKind::kFull;
  int64_t window = 512;  // W, sliding layers only: q - k < W attends.
  float scale = 1.0f;    // Multiplies q·k; Gemma 4 uses 1.0 (q/k norm).
  bool causal = true;    // k <= q; off for encoder-style attention.
  // On sliding layers, every token of an image block attends to the whole
  // block, past and future, inside its document.
  bool vision_bidirectional = true;
  float dropout = 0.0f;  // Must be 0: dropout is rejected, never ignored.
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_LAYER_CONFIG_H_
