#include "kernels/reference/chunked_attention.h"

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/chunk_args.h"
#include "kernels/chunk_backend.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "tests/kernels/testing/attention_case.h"

// RunChunked against the fp64 dense oracle. Tolerances, relative to the
// oracle's largest magnitude, are the stated ones of compare.h at scaled
// logits of standard deviation 1: O within OutputTolerance(dtype) (fp32
// 1e-5, plus 2^-8 for bf16, 2^-11 for fp16), LSE within 1e-5, dQ/dK/dV
// within GradientTolerance(dtype).

namespace ringattn::kernels::reference {
namespace {

using testing::AttentionCase;
using testing::NamedCase;

LayerConfig Layer(LayerKind kind, int64_t window, bool causal = true, bool vision = true) {
  LayerConfig layer;
  layer.kind = kind;
  layer.window = window;
  layer.causal = causal;
  layer.vision_bidirectional = vision;
  layer.scale = 0.125f;
  return layer;
}

RowLayout Row(std::vector<int64_t> docs, std::vector<std::pair<int64_t, int64_t>> images = {}) {
  RowLayout r;
  r.doc_lengths = std::move(docs);
  r.images = std::move(images);
  return r;
}

AttentionCase Case(BatchShape shape, std::vector<RowLayout> rows, LayerConfig layer, int64_t chunks,
                   DType dtype = DType::kF32) {
  AttentionCase c;
  c.shape = shape;
  c.layouts = std::move(rows);
  c.layer = layer;
  c.chunks = chunks;
  c.dtype = dtype;
  c.seed = static_cast<uint64_t>(17 + chunks * 5 + shape.seq_len);
  return c;
}

void ExpectAgainstOracle(const SyntheticBatch& batch, const LayerConfig& layer,
                         const ChunkedResult& got, bool backward) {
  const DenseProblem problem = ToDenseProblem(batch, layer);
  const DenseOutput want = DenseForward(problem);
  testing::ExpectWithin("O", got.out, want.out, OutputTolerance(batch.dtype));
  testing::ExpectWithin("LSE", got.lse, want.lse, 1e-5);
  if (!backward) return;
  const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
  const DenseGrads grads = DenseBackward(problem, dout);
  const double tol = GradientTolerance(batch.dtype);
  testing::ExpectWithin("dQ", got.dq, grads.dq, tol);
  testing::ExpectWithin("dK", got.dk, grads.dk, tol);
  testing::ExpectWithin("dV", got.dv, grads.dv, tol);
}

std::unique_ptr<ChunkBackend> CpuBackend() { return testing::MakeCpuBackend(/*num_threads=*/2); }

std::vector<NamedCase> Cases() {
  const BatchShape base{1, 4, 2, 96, 32};
  const RowLayout gemma = GemmaLikeLayout(96);  // Two documents, an image, padding.
  std::vector<NamedCase> cases;
  for (int64_t cp : {1, 2, 3, 4, 6, 8}) {
    cases.push_back({"GemmaLike_Full_F32_S96_Cp" + std::to_string(cp),
                     Case(base, {gemma}, Layer(LayerKind::kFull, 512), cp)});
  }
  for (int64_t cp : {1, 3, 4}) {
    cases.push_back({"GemmaLike_Sliding_W10_F32_S96_Cp" + std::to_string(cp),
                     Case(base, {gemma}, Layer(LayerKind::kSliding, 10), cp)});
  }
  cases.push_back({"NonCausal_Full_F32_S96_Cp3",
                   Case(base, {Row({96})}, Layer(LayerKind::kFull, 512, false), 3)});
  cases.push_back({"NonCausal_Sliding_W20_F32_S96_Cp4",
                   Case(base, {Row({96})}, Layer(LayerKind::kSliding, 20, false), 4)});
  // A window wider than a shard (24 tokens), so a query reaches two chunks back.
  cases.push_back({"Causal_Sliding_W50_F32_S96_Cp4",
                   Case(base, {Row({96})}, Layer(LayerKind::kSliding, 50), 4)});
  // An image block across the chunk boundaries at 24 and 48.
  cases.push_back({"Vision_Sliding_W6_F32_S96_Cp4",
                   Case(base, {Row({96}, {{20, 60}})}, Layer(LayerKind::kSliding, 6), 4)});
  cases.push_back(
      {"VisionOff_Sliding_W6_F32_S96_Cp4",
       Case(base, {Row({96}, {{20, 60}})}, Layer(LayerKind::kSliding, 6, true, false), 4)});
  // Tokens 60..95 are padding: the last chunk attends nothing and is
  // attended by nothing.
  cases.push_back({"LastChunkAllPadding_Full_F32_S96_Cp4",
                   Case(base, {Row({30, 30})}, Layer(LayerKind::kFull, 512), 4)});
  cases.push_back({"PackedDocs_Full_F32_B2_S96_Cp3",
                   Case({2, 4, 2, 96, 32}, {Row({10, 1, 40, 45}), Row({50}, {{5, 15}})},
                        Layer(LayerKind::kFull, 512), 3)});
  cases.push_back({"Gqa4to1_Sliding_W12_F32_S64_Cp2", Case({1, 4, 1, 64, 16}, {GemmaLikeLayout(64)},
                                                           Layer(LayerKind::kSliding, 12), 2)});
  cases.push_back({"GemmaLike_Full_BF16_S96_Cp4",
                   Case(base, {gemma}, Layer(LayerKind::kFull, 512), 4, DType::kBF16)});
  cases.push_back({"GemmaLike_Sliding_W16_F16_S96_Cp3",
                   Case(base, {gemma}, Layer(LayerKind::kSliding, 16), 3, DType::kF16)});
  return cases;
}

class ChunkedAttentionOracleTest : public ::testing::TestWithParam<NamedCase> {};

TEST_P(ChunkedAttentionOracleTest, ForwardAndBackwardMatchTheDenseOracle) {
  const AttentionCase& c = GetParam().c;
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  const SyntheticBatch batch = testing::MakeBatch(c);
  absl::StatusOr<ChunkedResult> got = RunChunked(batch, c.layer, c.chunks, *cpu);
  ASSERT_TRUE(got.ok()) << got.status();
  const BatchShape& s = c.shape;
  ASSERT_EQ(got->out.size(), static_cast<size_t>(s.batch * s.heads * s.seq_len * s.head_dim));
  ASSERT_EQ(got->lse.size(), static_cast<size_t>(s.batch * s.heads * s.seq_len));
  ASSERT_EQ(got->dk.size(), static_cast<size_t>(s.batch * s.kv_heads * s.seq_len * s.head_dim));
  ExpectAgainstOracle(batch, c.layer, *got, /*backward=*/true);
}

INSTANTIATE_TEST_SUITE_P(Cases, ChunkedAttentionOracleTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

TEST(ChunkedAttentionTest, ForwardOnlyLeavesTheGradientsEmpty) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  const AttentionCase c =
      Case({1, 4, 2, 96, 32}, {GemmaLikeLayout(96)}, Layer(LayerKind::kSliding, 10), 4);
  const SyntheticBatch batch = testing::MakeBatch(c);
  absl::StatusOr<ChunkedResult> got =
      RunChunked(batch, c.layer, c.chunks, *cpu, /*backward=*/false);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->dq.empty());
  EXPECT_TRUE(got->dk.empty());
  EXPECT_TRUE(got->dv.empty());
  EXPECT_EQ(got->backward_seconds, 0.0);
  ExpectAgainstOracle(batch, c.layer, *got, /*backward=*/false);
}

// The output is what a ring hands back: rounded to the input dtype once.
TEST(ChunkedAttentionTest, Bf16OutputIsRoundedToBf16) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  const AttentionCase c =
      Case({1, 4, 2, 96, 32}, {GemmaLikeLayout(96)}, Layer(LayerKind::kFull, 512), 3, DType::kBF16);
  absl::StatusOr<ChunkedResult> got =
      RunChunked(testing::MakeBatch(c), c.layer, c.chunks, *cpu, false);
  ASSERT_TRUE(got.ok()) << got.status();
  int64_t not_bf16 = 0, nonzero = 0;
  for (float x : got->out) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    not_bf16 += (bits & 0xFFFFu) != 0 ? 1 : 0;
    nonzero += x != 0.0f ? 1 : 0;
  }
  EXPECT_EQ(not_bf16, 0);
  EXPECT_GT(nonzero, 0);
}

TEST(ChunkedAttentionTest, ChunkCountThatDoesNotDivideTheSequenceIsRefused) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  const AttentionCase c =
      Case({1, 2, 1, 96, 16}, {testing::SingleDocument(96)}, Layer(LayerKind::kFull, 512), 1);
  const SyntheticBatch batch = testing::MakeBatch(c);
  for (int64_t chunks : {int64_t{0}, int64_t{-1}, int64_t{5}, int64_t{7}, int64_t{97}}) {
    SCOPED_TRACE(chunks);
    absl::StatusOr<ChunkedResult> got = RunChunked(batch, c.layer, chunks, *cpu);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
    EXPECT_NE(got.status().message().find("sequence length 96"), absl::string_view::npos)
        << got.status();
    EXPECT_NE(got.status().message().find(std::to_string(chunks)), absl::string_view::npos)
        << got.status();
  }
  // One chunk per token still divides it.
  EXPECT_TRUE(RunChunked(batch, c.layer, 96, *cpu, false).ok());
}

// A backend that records every step and runs it on the CPU kernels; it can
// be told to fail one step.
class RecordingBackend final : public ChunkBackend {
 public:
  struct Step {
    int64_t q_start, kv_start;
    std::array<int64_t, 4> q_shape, k_shape;
  };

  explicit RecordingBackend(ChunkBackend& cpu) : cpu_(cpu) {}

  std::string name() const override { return "recording"; }
  MemorySpace& space() override { return cpu_.space(); }
  absl::Status Forward(const ForwardChunkArgs& args) override {
    forward.push_back({args.q_meta.start, args.kv_meta.start, args.q.shape, args.k.shape});
    if (static_cast<int>(forward.size()) == fail_forward_at) {
      return absl::ResourceExhaustedError("forward step refused");
    }
    return cpu_.Forward(args);
  }
  absl::Status Backward(const BackwardChunkArgs& args) override {
    backward.push_back({args.q_meta.start, args.kv_meta.start, args.q.shape, args.k.shape});
    if (static_cast<int>(backward.size()) == fail_backward_at) {
      return absl::DataLossError("backward step refused");
    }
    return cpu_.Backward(args);
  }

  std::vector<Step> forward, backward;
  int fail_forward_at = -1;  // 1-based call number; -1: never.
  int fail_backward_at = -1;

 private:
  ChunkBackend& cpu_;
};

// SPEC §3: rank r holds the chunk of rank (r - i) mod cp at step i; every
// step is one query shard against one K/V chunk of L = S / cp tokens.
TEST(ChunkedAttentionTest, EveryQueryShardMeetsEveryChunkInRingOrder) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  constexpr int64_t kCp = 4, kS = 96, kL = kS / kCp;
  const AttentionCase c =
      Case({2, 4, 2, kS, 16}, {GemmaLikeLayout(kS)}, Layer(LayerKind::kSliding, 30), kCp);
  const SyntheticBatch batch = testing::MakeBatch(c);
  RecordingBackend backend(*cpu);
  absl::StatusOr<ChunkedResult> got = RunChunked(batch, c.layer, kCp, backend);
  ASSERT_TRUE(got.ok()) << got.status();
  for (const auto* steps : {&backend.forward, &backend.backward}) {
    ASSERT_EQ(steps->size(), static_cast<size_t>(kCp * kCp));
    for (int64_t r = 0; r < kCp; ++r) {
      for (int64_t i = 0; i < kCp; ++i) {
        const RecordingBackend::Step& s = (*steps)[r * kCp + i];
        EXPECT_EQ(s.q_start, r * kL) << "rank " << r << " step " << i;
        EXPECT_EQ(s.kv_start, ((r - i + kCp) % kCp) * kL) << "rank " << r << " step " << i;
        EXPECT_EQ(s.q_shape, (std::array<int64_t, 4>{2, 4, kL, 16}));
        EXPECT_EQ(s.k_shape, (std::array<int64_t, 4>{2, 2, kL, 16}));
      }
    }
  }
  ExpectAgainstOracle(batch, c.layer, *got, /*backward=*/true);
}

TEST(ChunkedAttentionTest, BackendErrorInForwardIsReturnedAsIs) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  const AttentionCase c =
      Case({1, 2, 1, 64, 16}, {testing::SingleDocument(64)}, Layer(LayerKind::kFull, 512), 4);
  RecordingBackend backend(*cpu);
  backend.fail_forward_at = 6;
  absl::StatusOr<ChunkedResult> got = RunChunked(testing::MakeBatch(c), c.layer, 4, backend);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << got.status();
  EXPECT_EQ(got.status().message(), "forward step refused");
  EXPECT_EQ(backend.forward.size(), 6u) << "no step runs after the failed one";
  EXPECT_TRUE(backend.backward.empty());
}

TEST(ChunkedAttentionTest, BackendErrorInBackwardIsReturnedAsIs) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  const AttentionCase c =
      Case({1, 2, 1, 64, 16}, {testing::SingleDocument(64)}, Layer(LayerKind::kFull, 512), 2);
  RecordingBackend backend(*cpu);
  backend.fail_backward_at = 3;
  absl::StatusOr<ChunkedResult> got = RunChunked(testing::MakeBatch(c), c.layer, 2, backend);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_EQ(got.status().message(), "backward step refused");
  EXPECT_EQ(backend.forward.size(), 4u);
  EXPECT_EQ(backend.backward.size(), 3u);
}

// A kernel's refusal (here: dropout, which the kernels reject rather than
// ignore) comes back from RunChunked, not a silent result.
TEST(ChunkedAttentionTest, KernelRefusalIsReturned) {
  auto cpu = CpuBackend();
  ASSERT_NE(cpu, nullptr);
  LayerConfig layer = Layer(LayerKind::kFull, 512);
  layer.dropout = 0.5f;
  const AttentionCase c = Case({1, 2, 1, 32, 16}, {testing::SingleDocument(32)}, layer, 2);
  absl::StatusOr<ChunkedResult> got = RunChunked(testing::MakeBatch(c), layer, 2, *cpu);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
}

}  // namespace
}  // namespace ringattn::kernels::reference
