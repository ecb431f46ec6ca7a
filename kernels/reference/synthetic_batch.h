#ifndef RINGATTN_KERNELS_REFERENCE_SYNTHETIC_BATCH_H_
#define RINGATTN_KERNELS_REFERENCE_SYNTHETIC_BATCH_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/layer_config.h"
#include "kernels/reference/dense_attention.h"

// Random Gemma-4-like batches for the demo, the tests and the benchmarks:
// packed documents, image blocks, right padding, and Q/K/V/dO values that are
// exactly representable in the chosen dtype (so the oracle sees the very
// inputs the kernels see).

namespace ringattn::kernels::reference {

// The token layout of one row of the padded sequence.
struct RowLayout {
  // Packed documents from position 0, numbered 1, 2, ...; positions past
  // their sum are padding.
  std::vector<int64_t> doc_lengths;
  // [begin, end) runs of image tokens; each maximal run is one vision group.
  std::vector<std::pair<int64_t, int64_t>> images;
};

struct BatchShape {
  int64_t batch = 1;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t seq_len = 256;  // Padded length S.
  int64_t head_dim = 64;
};

struct SyntheticBatch {
  BatchShape shape;
  DType dtype = DType::kF32;
  std::vector<float> q;          // [B, H, S, D], values exact in dtype
  std::vector<float> k;          // [B, Hkv, S, D]
  std::vector<float> v;          // [B, Hkv, S, D]
  std::vector<float> dout;       // [B, H, S, D]
  std::vector<int32_t> doc;      // [B, S]
  std::vector<int32_t> vision;   // [B, S]
  std::vector<uint8_t> padding;  // [B, S]
};

// Two packed documents, one image block inside the first, about 15% right
// padding: the shape of a Gemma 4 training row.
RowLayout GemmaLikeLayout(int64_t seq_len);

// Metadata from `layouts` (one per row, or a single one for every row),
// vision groups numbered per row in order, and uniform random values rounded
// to `dtype`: Q and K in [-qk_amplitude, qk_amplitude), V and dO in [-1, 1).
SyntheticBatch MakeSyntheticBatch(const BatchShape& shape, const std::vector<RowLayout>& layouts,
                                  DType dtype, uint64_t seed, float qk_amplitude = 1.0f);

// The Q/K amplitude at which the scaled logits scale * q·k have standard
// deviation `logit_std` (for uniform values: a^2 / 3 * sqrt(D) * scale).
// fp32 rounds a logit of magnitude x to about x * 2^-24 per term of the dot
// product, and softmax turns that absolute error into a relative error of
// the output, so tests that state a tolerance also state the logit scale.
float AmplitudeForLogitStd(double logit_std, int64_t head_dim, float scale);

// The same problem in fp64 for the oracle.
DenseProblem ToDenseProblem(const SyntheticBatch& batch, const LayerConfig& layer);

// Raw little-endian bytes of `values` in `dtype`.
std::vector<uint8_t> Encode(const std::vector<float>& values, DType dtype);

// Sequence slice [begin, end) of a tensor [outer, S, inner].
template <typename T>
std::vector<T> SliceSequence(const std::vector<T>& t, int64_t outer, int64_t seq_len, int64_t inner,
                             int64_t begin, int64_t end) {
  std::vector<T> out;
  out.reserve(outer * (end - begin) * inner);
  for (int64_t o = 0; o < outer; ++o) {
    out.insert(out.end(), t.begin() + (o * seq_len + begin) * inner,
               t.begin() + (o * seq_len + end) * inner);
  }
  return out;
}

// Writes `part` [outer, end - begin, inner] into t [outer, S, inner].
template <typename T>
void ScatterSequence(const std::vector<T>& part, int64_t outer, int64_t seq_len, int64_t inner,
                     int64_t begin, int64_t end, std::vector<T>& t) {
  const int64_t len = end - begin;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < len * inner; ++i) {
      t[(o * seq_len + begin) * inner + i] = part[o * len * inner + i];
    }
  }
}

}  // namespace ringattn::kernels::reference

#endif  // RINGATTN_KERNELS_REFERENCE_SYNTHETIC_BATCH_H_
