#include "tests/kernels/testing/attention_case.h"

#include <cmath>

#include "gtest/gtest.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"

namespace ringattn::kernels::testing {
void ExpectWithin(const char* what, std::span<const float> got, std::span<const double> want,
                  double tolerance) {
  const reference::ErrorStats e = reference::Compare(got, want);
  EXPECT_EQ(e.nans, 0) << what << " has NaN";
  EXPECT_EQ(e.mismatched_infinities, 0) << what << " has -inf where the oracle has not";
  EXPECT_LE(e.relative(), tolerance)
      << what << ": max|err| " << e.max_abs_err << " over max|ref| " << e.max_ref;
}

reference::SyntheticBatch MakeBatch(const AttentionCase& c) {
  return reference::MakeSyntheticBatch(
      c.shape, c.layouts, c.dtype, c.seed,
      reference::AmplitudeForLogitStd(c.logit_std, c.shape.head_dim, c.layer.scale));
}

void ExpectResultMatchesOracle(const reference::SyntheticBatch& batch, const LayerConfig& layer,
                               const reference::ChunkedResult& got, bool backward) {
  const reference::DenseProblem problem = reference::ToDenseProblem(batch, layer);
  const reference::DenseOutput want = reference::DenseForward(problem);
  ExpectWithin("O", got.out, want.out, reference::OutputTolerance(batch.dtype));
  ExpectWithin("LSE", got.lse, want.lse, 1e-5);
  if (!backward) return;
  const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
  // The backward was handed O rounded to the input dtype.
  const reference::DenseGrads grads = reference::GradsAtGivenOutput(
      problem, want, reference::DenseBackward(problem, dout), batch.dout, got.out);
  const double tol = reference::GradientTolerance(batch.dtype);
  ExpectWithin("dQ", got.dq, grads.dq, tol);
  ExpectWithin("dK", got.dk, grads.dk, tol);
  ExpectWithin("dV", got.dv, grads.dv, tol);
}

void ExpectMatchesOracle(const AttentionCase& c, ChunkBackend& backend, bool backward) {
  const reference::SyntheticBatch batch = MakeBatch(c);
  absl::StatusOr<reference::ChunkedResult> got =
      reference::RunChunked(batch, c.layer, c.chunks, backend, backward);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectResultMatchesOracle(batch, c.layer, *got, backward);
}

std::vector<std::string> SupportedIsas() { return SupportedCpuIsas(); }

std::unique_ptr<ChunkBackend> MakeCpuBackend(int num_threads, const std::string& isa) {
  absl::StatusOr<std::unique_ptr<ChunkBackend>> backend = kernels::MakeCpuBackend(num_threads, isa);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

reference::RowLayout SingleDocument(int64_t seq_len) {
  reference::RowLayout layout;
  layout.doc_lengths = {seq_len};
  return layout;
}

}  // namespace ringattn::kernels::testing

namespace ringattn::kernels::testing {
namespace {

LayerConfig Layer(LayerKind kind, int64_t window = 0, bool causal = true, bool vision = true,
                  float scale = 0.0f, int64_t head_dim = 64) {
  LayerConfig layer;
  layer.kind = kind;
  layer.window = window > 0 ? window : 512;
  layer.causal = causal;
  layer.vision_bidirectional = vision;
  layer.scale = scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  return layer;
}

AttentionCase Case(reference::BatchShape shape, std::vector<reference::RowLayout> layouts,
                   LayerConfig layer, int64_t chunks, DType dtype = DType::kF32) {
  AttentionCase c;
  c.shape = shape;
  c.layouts = std::move(layouts);
  c.layer = layer;
  c.chunks = chunks;
  c.dtype = dtype;
  c.seed = static_cast<uint64_t>(shape.seq_len * 31 + chunks * 7 + shape.head_dim);
  return c;
}

reference::RowLayout Layout(std::vector<int64_t> docs,
                            std::vector<std::pair<int64_t, int64_t>> images = {}) {
  reference::RowLayout layout;
  layout.doc_lengths = std::move(docs);
  layout.images = std::move(images);
  return layout;
}

}  // namespace

std::vector<NamedCase> OracleCases() {
  using reference::BatchShape;
  const LayerKind kFull = LayerKind::kFull;
  const LayerKind kSliding = LayerKind::kSliding;
  std::vector<NamedCase> cases;
  auto add = [&](std::string name, AttentionCase c) {
    cases.push_back({std::move(name), std::move(c)});
  };
  const BatchShape base{1, 4, 2, 256, 64};

  add("Causal_Full_F32_D64_Cp1", Case(base, {SingleDocument(256)}, Layer(kFull), 1));
  add("Causal_Full_F32_D64_Cp4", Case(base, {SingleDocument(256)}, Layer(kFull), 4));
  add("NonCausal_Full_F32_D64_Cp2",
      Case(base, {SingleDocument(256)}, Layer(kFull, 0, /*causal=*/false), 2));
  add("Sliding_W17_F32_D64_Cp3",
      Case({1, 4, 2, 192, 64}, {SingleDocument(192)}, Layer(kSliding, 17), 3));
  add("Sliding_W100_F32_D64_Cp4",
      Case({1, 4, 2, 192, 64}, {SingleDocument(192)}, Layer(kSliding, 100), 4));
  add("NonCausal_Sliding_W40_F32_D64_Cp4",
      Case({1, 4, 2, 192, 64}, {SingleDocument(192)}, Layer(kSliding, 40, false), 4));
  // An image block [50, 150) that spans the chunk boundaries at 64 and 128.
  const reference::RowLayout image = Layout({256}, {{50, 150}});
  add("Vision_Sliding_W16_F32_D64_Cp4", Case(base, {image}, Layer(kSliding, 16), 4));
  add("VisionOff_Sliding_W16_F32_D64_Cp4",
      Case(base, {image}, Layer(kSliding, 16, true, /*vision=*/false), 4));
  add("Vision_Full_F32_D64_Cp4", Case(base, {image}, Layer(kFull), 4));
  add("PackedDocs_Full_F32_D64_Cp3",
      Case({1, 4, 2, 192, 64}, {Layout({70, 1, 50, 71})}, Layer(kFull), 3));
  // Two image runs touching across a document boundary at 120: one vision
  // group by SPEC §1, but the document rule must still split it.
  add("ImageAtDocBoundary_Sliding_W8_F32_D64_Cp2",
      Case(base, {Layout({120, 136}, {{100, 120}, {120, 140}})}, Layer(kSliding, 8), 2));
  add("LastChunkAllPadding_Full_F32_D64_Cp4", Case(base, {Layout({150, 30})}, Layer(kFull), 4));
  add("GemmaLike_Sliding_W32_F32_D64_B2_Cp4",
      Case({2, 4, 2, 256, 64},
           {reference::GemmaLikeLayout(256), Layout({40, 100, 60}, {{150, 190}})},
           Layer(kSliding, 32), 4));
  add("GemmaLike_Full_F32_D64_B2_Cp4",
      Case({2, 4, 2, 256, 64},
           {reference::GemmaLikeLayout(256), Layout({40, 100, 60}, {{150, 190}})}, Layer(kFull),
           4));
  add("Gqa8to2_Full_F32_D64_Cp2",
      Case({1, 8, 2, 128, 64}, {reference::GemmaLikeLayout(128)}, Layer(kFull), 2));
  add("Gqa8to1_Sliding_W24_F32_D64_Cp2",
      Case({1, 8, 1, 128, 64}, {reference::GemmaLikeLayout(128)}, Layer(kSliding, 24), 2));
  add("Mha4to4_Full_F32_D64_Cp2",
      Case({1, 4, 4, 128, 64}, {reference::GemmaLikeLayout(128)}, Layer(kFull), 2));
  add("OddLengths_Sliding_W20_F32_D40_Cp3", Case({1, 3, 1, 111, 40}, {Layout({60, 45}, {{30, 50}})},
                                                 Layer(kSliding, 20, true, true, 0.0f, 40), 3));
  for (int64_t d : {128, 256, 512}) {
    add("HeadDim_Full_F32_D" + std::to_string(d) + "_Cp2",
        Case({1, 2, 1, 96, d}, {reference::GemmaLikeLayout(96)},
             Layer(kFull, 0, true, true, 0.0f, d), 2));
  }
  AttentionCase gemma_scale = Case({1, 4, 2, 128, 256}, {reference::GemmaLikeLayout(128)},
                                   Layer(kSliding, 48, true, true, /*scale=*/1.0f), 2);
  gemma_scale.logit_std = 2.0;
  add("GemmaScale1_Sliding_W48_F32_D256_Cp2", gemma_scale);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    const std::string tag = dt == DType::kBF16 ? "Bf16" : "F16";
    add("GemmaLike_Sliding_W32_" + tag + "_D64_Cp2",
        Case(base, {reference::GemmaLikeLayout(256)}, Layer(kSliding, 32), 2, dt));
    add("GemmaLike_Full_" + tag + "_D128_Cp4",
        Case({1, 4, 2, 256, 128}, {reference::GemmaLikeLayout(256)},
             Layer(kFull, 0, true, true, 0.0f, 128), 4, dt));
  }
  return cases;
}

}  // namespace ringattn::kernels::testing
