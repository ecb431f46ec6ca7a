#include "kernels/reference/synthetic_batch.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/convert.h"

namespace ringattn::kernels::reference {
namespace {

std::vector<float> RandomValues(int64_t n, DType dtype, std::mt19937_64& rng,
                                float amplitude = 1.0f) {
  std::uniform_real_distribution<float> dist(-amplitude, amplitude);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  RoundTo(dtype, v.data(), n);
  return v;
}

}  // namespace

RowLayout GemmaLikeLayout(int64_t seq_len) {
  const int64_t doc1 = seq_len * 45 / 100;
  const int64_t doc2 = seq_len * 40 / 100;
  RowLayout layout;
  layout.doc_lengths = {doc1, doc2};
  layout.images = {{doc1 / 3, doc1 * 2 / 3}};
  return layout;
}

SyntheticBatch MakeSyntheticBatch(const BatchShape& shape, const std::vector<RowLayout>& layouts,
                                  DType dtype, uint64_t seed, float qk_amplitude) {
  SyntheticBatch batch;
  batch.shape = shape;
  batch.dtype = dtype;
  const int64_t B = shape.batch;
  const int64_t S = shape.seq_len;
  batch.doc.assign(B * S, 0);
  batch.vision.assign(B * S, -1);
  batch.padding.assign(B * S, 1);
  for (int64_t b = 0; b < B; ++b) {
    const RowLayout& layout = layouts[layouts.size() == 1 ? 0 : b];
    int64_t pos = 0;
    int32_t doc_id = 0;
    for (int64_t len : layout.doc_lengths) {
      ++doc_id;
      for (int64_t i = 0; i < len && pos < S; ++i, ++pos) {
        batch.doc[b * S + pos] = doc_id;
        batch.padding[b * S + pos] = 0;
      }
    }
    std::vector<uint8_t> is_image(S, 0);
    for (const auto& [begin, end] : layout.images) {
      for (int64_t i = std::max<int64_t>(begin, 0); i < std::min(end, S); ++i) is_image[i] = 1;
    }
    // Every maximal run of image tokens (that is not padding) is a group.
    auto image_at = [&](int64_t i) { return is_image[i] != 0 && batch.padding[b * S + i] == 0; };
    int32_t group = -1;
    for (int64_t i = 0; i < S; ++i) {
      if (!image_at(i)) continue;
      if (i == 0 || !image_at(i - 1)) ++group;
      batch.vision[b * S + i] = group;
    }
  }
  std::mt19937_64 rng(seed);
  const int64_t q_size = B * shape.heads * S * shape.head_dim;
  const int64_t kv_size = B * shape.kv_heads * S * shape.head_dim;
  batch.q = RandomValues(q_size, dtype, rng, qk_amplitude);
  batch.k = RandomValues(kv_size, dtype, rng, qk_amplitude);
  batch.v = RandomValues(kv_size, dtype, rng);
  batch.dout = RandomValues(q_size, dtype, rng);
  return batch;
}

float AmplitudeForLogitStd(double logit_std, int64_t head_dim, float scale) {
  return static_cast<float>(
      std::sqrt(3.0 * logit_std / (scale * std::sqrt(static_cast<double>(head_dim)))));
}

DenseProblem ToDenseProblem(const SyntheticBatch& batch, const LayerConfig& layer) {
  DenseProblem p;
  p.batch = batch.shape.batch;
  p.heads = batch.shape.heads;
  p.kv_heads = batch.shape.kv_heads;
  p.seq_len = batch.shape.seq_len;
  p.head_dim = batch.shape.head_dim;
  p.q.assign(batch.q.begin(), batch.q.end());
  p.k.assign(batch.k.begin(), batch.k.end());
  p.v.assign(batch.v.begin(), batch.v.end());
  p.doc = batch.doc;
  p.vision = batch.vision;
  p.padding = batch.padding;
  p.layer = layer;
  return p;
}

std::vector<uint8_t> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  FromF32(dtype, values.data(), static_cast<int64_t>(values.size()), bytes.data());
  return bytes;
}

}  // namespace ringattn::kernels::reference
