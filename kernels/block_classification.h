#ifndef RINGATTN_KERNELS_BLOCK_CLASSIFICATION_H_
#define RINGATTN_KERNELS_BLOCK_CLASSIFICATION_H_

#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/mask.h"

namespace ringattn::kernels {

// Cheap summary of a run of consecutive tokens (one tile of queries or
// keys), enough to decide whether a (query tile, key tile) pair can be
// skipped or computed without a per-element mask (SPEC §5).
struct TileSummary {
  int64_t pos_min = 0;  // Global positions of the first and last token.
  int64_t pos_max = -1;
  int32_t count = 0;        // Tokens in the tile.
  int32_t valid_count = 0;  // Tokens with doc > 0 and not padding.
  int32_t doc_min = 0;      // Document range over valid tokens.
  int32_t doc_max = -1;
  int32_t vision_min = 0;   // Vision group range over valid vision tokens;
  int32_t vision_max = -1;  // empty (min > max) when there are none.
};

// Summarizes tokens [first, first + count) of one row's metadata.
// doc, vision, padding: [count] slices; start: global position of token 0.
RINGATTN_HOST_DEVICE TileSummary Summarize(const int32_t* doc, const int32_t* vision,
                                           const uint8_t* padding, int64_t start, int32_t count) {
  TileSummary s;
  s.pos_min = start;
  s.pos_max = start + count - 1;
  s.count = count;
  for (int32_t i = 0; i < count; ++i) {
    if (doc[i] <= 0 || padding[i] != 0) continue;
    if (s.valid_count == 0 || doc[i] < s.doc_min) s.doc_min = doc[i];
    if (s.valid_count == 0 || doc[i] > s.doc_max) s.doc_max = doc[i];
    ++s.valid_count;
    if (vision[i] >= 0) {
      if (s.vision_min > s.vision_max) {
        s.vision_min = s.vision_max = vision[i];
      } else {
        if (vision[i] < s.vision_min) s.vision_min = vision[i];
        if (vision[i] > s.vision_max) s.vision_max = vision[i];
      }
    }
  }
  return s;
}

enum class TileClass : uint8_t {
  kEmpty,    // Every pair is masked: skip the tile.
  kPartial,  // Evaluate the mask per element.
  kFull,     // Every pair attends: no per-element mask.
};

// Conservative classification: kEmpty only if no pair attends, kFull only if
// every pair does; anything uncertain is kPartial.
RINGATTN_HOST_DEVICE TileClass Classify(const MaskRule& rule, const TileSummary& q,
                                        const TileSummary& k) {
  if (q.valid_count == 0 || k.valid_count == 0) return TileClass::kEmpty;
  if (q.doc_max < k.doc_min || k.doc_max < q.doc_min) return TileClass::kEmpty;

  const bool future = rule.causal && k.pos_min > q.pos_max;
  const bool out_of_window = rule.windowed && q.pos_min - k.pos_max >= rule.window;
  if (future || out_of_window) {
    const bool vision_may_attend = rule.vision_bidirectional && q.vision_min <= q.vision_max &&
                                   k.vision_min <= k.vision_max && q.vision_min <= k.vision_max &&
                                   k.vision_min <= q.vision_max;
    if (!vision_may_attend) return TileClass::kEmpty;
    return TileClass::kPartial;
  }

  const bool all_valid = q.valid_count == q.count && k.valid_count == k.count;
  const bool one_doc = q.doc_min == q.doc_max && k.doc_min == k.doc_max && q.doc_min == k.doc_min;
  const bool all_past = !rule.causal || k.pos_max <= q.pos_min;
  const bool all_in_window = !rule.windowed || q.pos_max - k.pos_min < rule.window;
  if (all_valid && one_doc && all_past && all_in_window) return TileClass::kFull;
  return TileClass::kPartial;
}

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_BLOCK_CLASSIFICATION_H_
