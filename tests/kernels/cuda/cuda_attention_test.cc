// CudaBackend against the fp64 dense oracle over the mask-feature matrix,
// computed the way a ring computes it (contiguous shards, every query shard
// against every K/V chunk in ring order, partials merged in fp32, dK/dV
// summed at the owner), plus single-chunk checks against the CPU kernels
// for what the ring layout cannot express (Lq != Lk, arbitrary offsets,
// accumulation into existing gradients). Every test skips without a GPU.
//
// Tolerances, relative to the largest oracle magnitude (SPEC §6): fp32
// inputs as on the CPU (1e-5). bf16/fp16 run on tensor cores, which round
// the probabilities P (forward and backward) and the score gradients dS to
// the input format before the P V, P^T dO, dS K and dS^T Q products: one
// more unit roundoff u of that format than the CPU path, which computes
// those products in fp32. So outputs get 2u + 1e-5 and gradients 3u + 1e-5.

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/chunk_backend.h"
#include "kernels/convert.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/merge.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "kernels/reference/synthetic_batch.h"
#include "kernels/status_macros.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::kernels::cuda {
namespace {

using reference::BatchShape;
using reference::ChunkedResult;
using reference::RowLayout;
using reference::SyntheticBatch;
using testing::AttentionCase;
using testing::ExpectWithin;
using testing::NamedCase;

constexpr float kInf = std::numeric_limits<float>::infinity();

double ExtraRoundoff(DType dtype) {
  return reference::OutputTolerance(dtype) - reference::OutputTolerance(DType::kF32);
}
double OutputTolerance(DType dtype) {
  return reference::OutputTolerance(dtype) + ExtraRoundoff(dtype);
}
double GradientTolerance(DType dtype) {
  return reference::GradientTolerance(dtype) + ExtraRoundoff(dtype);
}

TensorRef Ref(const std::vector<uint8_t>& bytes, DType dtype, int64_t b, int64_t h, int64_t l,
              int64_t d) {
  return TensorRef{dtype, {b, h, l, d}, bytes.data(), bytes.size()};
}

std::unique_ptr<CudaBackend> MakeBackendOrNull() {
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create(0);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// backward: also run and check dQ, dK, dV.
void ExpectRingMatchesOracle(const AttentionCase& c, bool backward) {
  std::unique_ptr<CudaBackend> backend = MakeBackendOrNull();
  ASSERT_NE(backend, nullptr);
  const SyntheticBatch batch = testing::MakeBatch(c);
  absl::StatusOr<ChunkedResult> got =
      reference::RunChunked(batch, c.layer, c.chunks, *backend, backward);
  ASSERT_TRUE(got.ok()) << got.status();

  const reference::DenseProblem problem = reference::ToDenseProblem(batch, c.layer);
  if (!backward) {
    const reference::DenseOutput want = reference::DenseForward(problem);
    ExpectWithin("O", got->out, want.out, OutputTolerance(c.dtype));
    ExpectWithin("LSE", got->lse, want.lse, 1e-5);
    // Padding queries: exactly 0 and -inf, not merely close (SPEC §2).
    const BatchShape& sh = c.shape;
    for (int64_t b = 0; b < sh.batch; ++b) {
      for (int64_t s = 0; s < sh.seq_len; ++s) {
        const int64_t t = b * sh.seq_len + s;
        if (batch.doc[t] > 0 && batch.padding[t] == 0) continue;
        for (int64_t h = 0; h < sh.heads; ++h) {
          const int64_t row = (b * sh.heads + h) * sh.seq_len + s;
          EXPECT_EQ(got->lse[row], -kInf) << "padding row " << s;
          for (int64_t d = 0; d < sh.head_dim; ++d) {
            ASSERT_EQ(got->out[row * sh.head_dim + d], 0.0f) << "padding row " << s;
          }
        }
      }
    }
    return;
  }
  const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
  const reference::DenseGrads grads = reference::DenseBackward(problem, dout);
  const double tol = GradientTolerance(c.dtype);
  ExpectWithin("dQ", got->dq, grads.dq, tol);
  ExpectWithin("dK", got->dk, grads.dk, tol);
  ExpectWithin("dV", got->dv, grads.dv, tol);
}

LayerConfig Layer(LayerKind kind, int64_t head_dim, int64_t window = 512, bool causal = true,
                  bool vision = true) {
  LayerConfig layer;
  layer.kind = kind;
  layer.window = window;
  layer.causal = causal;
  layer.vision_bidirectional = vision;
  layer.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  return layer;
}

AttentionCase Case(BatchShape shape, std::vector<RowLayout> layouts, LayerConfig layer,
                   int64_t chunks, DType dtype) {
  AttentionCase c;
  c.shape = shape;
  c.layouts = std::move(layouts);
  c.layer = layer;
  c.chunks = chunks;
  c.dtype = dtype;
  c.seed = static_cast<uint64_t>(shape.seq_len * 131 + chunks * 17 + shape.head_dim * 3 +
                                 static_cast<int>(dtype));
  return c;
}

RowLayout Layout(std::vector<int64_t> docs, std::vector<std::pair<int64_t, int64_t>> images = {}) {
  RowLayout layout;
  layout.doc_lengths = std::move(docs);
  layout.images = std::move(images);
  return layout;
}

const char* Tag(DType dt) {
  switch (dt) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "Bf16";
    case DType::kF16:
      return "F16";
  }
  return "X";
}

std::vector<NamedCase> CudaCases() {
  const LayerKind kFull = LayerKind::kFull;
  const LayerKind kSliding = LayerKind::kSliding;
  std::vector<NamedCase> cases;
  auto add = [&](const std::string& name, AttentionCase c) {
    cases.push_back({absl::StrCat(Tag(c.dtype), "_", name), std::move(c)});
  };
  const DType kDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (DType dt : kDtypes) {
    add("D64_Causal_Cp1",
        Case({1, 4, 2, 256, 64}, {testing::SingleDocument(256)}, Layer(kFull, 64), 1, dt));
    add("D128_Causal_Cp4",
        Case({1, 4, 2, 512, 128}, {testing::SingleDocument(512)}, Layer(kFull, 128), 4, dt));
    add("D64_NonCausal_Cp2", Case({1, 4, 2, 256, 64}, {testing::SingleDocument(256)},
                                  Layer(kFull, 64, 512, /*causal=*/false), 2, dt));
    add("D64_SlidingW17_Cp3",
        Case({1, 4, 2, 192, 64}, {testing::SingleDocument(192)}, Layer(kSliding, 64, 17), 3, dt));
    add("D64_NonCausalSlidingW40_Cp4", Case({1, 4, 2, 192, 64}, {testing::SingleDocument(192)},
                                            Layer(kSliding, 64, 40, false), 4, dt));
    // An image block [50, 150) across the chunk boundaries at 64 and 128
    // and across the diagonal: it sees itself both ways.
    add("D64_VisionSlidingW16_Cp4",
        Case({1, 4, 2, 256, 64}, {Layout({256}, {{50, 150}})}, Layer(kSliding, 64, 16), 4, dt));
    add("D64_PackedDocs_Cp3",
        Case({1, 4, 2, 192, 64}, {Layout({70, 1, 50, 71})}, Layer(kFull, 64), 3, dt));
    // Padding past 180 and a last chunk that is all padding.
    add("D64_LastChunkAllPadding_Cp4",
        Case({1, 4, 2, 256, 64}, {Layout({150, 30})}, Layer(kFull, 64), 4, dt));
    add("D64_GemmaLikeSlidingW32_B2_Cp4",
        Case({2, 4, 2, 256, 64},
             {reference::GemmaLikeLayout(256), Layout({40, 100, 60}, {{150, 190}})},
             Layer(kSliding, 64, 32), 4, dt));
    for (int64_t d : {64, 80, 128, 256, 512}) {
      add(absl::StrCat("D", d, "_GemmaLikeFull_Cp2"),
          Case({1, 2, 1, 160, d}, {reference::GemmaLikeLayout(160)}, Layer(kFull, d), 2, dt));
    }
    add("D1_Causal_Cp2",
        Case({1, 2, 1, 96, 1}, {testing::SingleDocument(96)}, Layer(kFull, 1), 2, dt));
  }
  // Window boundary at Gemma 4's W = 512: q - k = 511 attends, 512 does not.
  add("D128_SlidingW512_Cp3", Case({1, 2, 1, 1536, 128}, {testing::SingleDocument(1536)},
                                   Layer(kSliding, 128, 512), 3, DType::kBF16));
  add("D256_SlidingW512_Cp2", Case({1, 2, 1, 1024, 256}, {reference::GemmaLikeLayout(1024)},
                                   Layer(kSliding, 256, 512), 2, DType::kF32));
  add("D64_VisionOffSlidingW16_Cp4",
      Case({1, 4, 2, 256, 64}, {Layout({256}, {{50, 150}})},
           Layer(kSliding, 64, 16, true, /*vision=*/false), 4, DType::kBF16));
  add("D64_VisionFull_Cp4",
      Case({1, 4, 2, 256, 64}, {Layout({256}, {{50, 150}})}, Layer(kFull, 64), 4, DType::kF16));
  add("D64_ImageAtDocBoundarySlidingW8_Cp2",
      Case({1, 4, 2, 256, 64}, {Layout({120, 136}, {{100, 120}, {120, 140}})},
           Layer(kSliding, 64, 8), 2, DType::kBF16));
  add("D64_Gqa8to2_Cp2", Case({1, 8, 2, 128, 64}, {reference::GemmaLikeLayout(128)},
                              Layer(kFull, 64), 2, DType::kBF16));
  add("D64_Gqa8to1_SlidingW24_Cp2", Case({1, 8, 1, 128, 64}, {reference::GemmaLikeLayout(128)},
                                         Layer(kSliding, 64, 24), 2, DType::kF16));
  add("D64_Mha4to4_Cp2", Case({1, 4, 4, 128, 64}, {reference::GemmaLikeLayout(128)},
                              Layer(kFull, 64), 2, DType::kF32));
  add("D40_OddLengths_SlidingW20_Cp3", Case({1, 3, 1, 111, 40}, {Layout({60, 45}, {{30, 50}})},
                                            Layer(kSliding, 40, 20), 3, DType::kBF16));
  AttentionCase gemma = Case({1, 4, 2, 256, 256}, {reference::GemmaLikeLayout(256)},
                             Layer(kSliding, 256, 48), 2, DType::kBF16);
  gemma.layer.scale = 1.0f;  // Gemma 4: q/k norm instead of 1/sqrt(D).
  gemma.logit_std = 2.0;
  add("D256_GemmaScale1_SlidingW48_Cp2", gemma);
  return cases;
}

class CudaRingOracleTest : public ::testing::TestWithParam<NamedCase> {};

TEST_P(CudaRingOracleTest, Fwd) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpectRingMatchesOracle(GetParam().c, /*backward=*/false);
}

TEST_P(CudaRingOracleTest, Bwd) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpectRingMatchesOracle(GetParam().c, /*backward=*/true);
}

// Attention weights made visible: with D = S and V[k] = e_k, output row q
// of the merged ring result is exactly the softmax weights of query q.
std::vector<float> RingWeights(AttentionCase c) {
  c.shape.head_dim = c.shape.seq_len;
  c.shape.heads = c.shape.kv_heads = 1;
  SyntheticBatch batch = testing::MakeBatch(c);
  const int64_t S = c.shape.seq_len;
  for (int64_t k = 0; k < S; ++k) {
    for (int64_t d = 0; d < S; ++d) batch.v[k * S + d] = d == k ? 1.0f : 0.0f;
  }
  std::unique_ptr<CudaBackend> backend = MakeBackendOrNull();
  if (backend == nullptr) return {};
  absl::StatusOr<ChunkedResult> r =
      reference::RunChunked(batch, c.layer, c.chunks, *backend, false);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->out : std::vector<float>();
}

// q - k = W - 1 attends and q - k = W does not, inside a chunk and across
// the chunk boundary, with the tile boundaries of every dtype's kernel.
TEST(CudaWindowTest, Fwd_SlidingW100_BoundaryIsStrictAcrossChunks) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::kF32, DType::kBF16}) {
    AttentionCase c;
    c.shape = {1, 1, 1, 256, 256};
    c.layouts = {testing::SingleDocument(256)};
    c.layer.kind = LayerKind::kSliding;
    c.layer.window = 100;
    c.chunks = 2;
    c.dtype = dt;
    const std::vector<float> w = RingWeights(c);
    ASSERT_EQ(w.size(), 256u * 256u);
    for (int64_t q = 100; q < 256; ++q) {
      EXPECT_GT(w[q * 256 + q - 99], 0.0f) << "q - k = W - 1 must attend, q=" << q;
      EXPECT_EQ(w[q * 256 + q - 100], 0.0f) << "q - k = W must not attend, q=" << q;
      if (q < 255) {
        EXPECT_EQ(w[q * 256 + q + 1], 0.0f) << "future key, q=" << q;
      }
    }
  }
}

// An image block across the chunk boundary sees itself both ways on a
// sliding layer, beyond the window and into the causal future.
TEST(CudaWindowTest, Fwd_ImageBlockSpanningChunksSeesItselfBothWays) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  AttentionCase c;
  c.shape = {1, 1, 1, 128, 128};
  reference::RowLayout layout = testing::SingleDocument(128);
  layout.images = {{50, 80}};  // Crosses the chunk boundary at 64.
  c.layouts = {layout};
  c.layer.kind = LayerKind::kSliding;
  c.layer.window = 4;
  c.chunks = 2;
  c.dtype = DType::kBF16;
  const std::vector<float> w = RingWeights(c);
  ASSERT_EQ(w.size(), 128u * 128u);
  for (int64_t q = 50; q < 80; ++q) {
    for (int64_t k = 50; k < 80; ++k) {
      EXPECT_GT(w[q * 128 + k], 0.0f) << "image token " << q << " must see " << k;
    }
    EXPECT_EQ(w[q * 128 + 40], 0.0f) << "text outside the window, q=" << q;
  }
  EXPECT_EQ(w[90 * 128 + 60], 0.0f) << "text after the image sees it only within the window";
}

INSTANTIATE_TEST_SUITE_P(Matrix, CudaRingOracleTest, ::testing::ValuesIn(CudaCases()),
                         [](const auto& info) { return info.param.name; });

// --- Single chunks against the CPU kernels -------------------------------

// A query shard of Lq tokens at global start q_start against a key chunk of
// Lk tokens at kv_start, both cut from one synthetic batch of S tokens.
struct ChunkCase {
  DType dtype;
  int64_t head_dim;
  int64_t q_start, q_len, kv_start, kv_len;
  LayerConfig layer;
};

struct ChunkInputs {
  std::vector<uint8_t> q, k, v, out, dout;
  std::vector<int32_t> q_doc, q_vis, kv_doc, kv_vis;
  std::vector<uint8_t> q_pad, kv_pad;
  std::vector<float> lse;
  int64_t B = 1, H = 4, Hkv = 2;
};

ChunkInputs MakeChunkInputs(const ChunkCase& c) {
  ChunkInputs in;
  const int64_t S = 640;
  const SyntheticBatch batch = reference::MakeSyntheticBatch(
      {in.B, in.H, in.Hkv, S, c.head_dim}, {reference::GemmaLikeLayout(S)}, c.dtype,
      static_cast<uint64_t>(c.q_len * 7 + c.kv_len), 1.0f);
  const int64_t D = c.head_dim;
  auto slice = [&](const std::vector<float>& t, int64_t heads, int64_t begin, int64_t len) {
    return reference::Encode(reference::SliceSequence(t, in.B * heads, S, D, begin, begin + len),
                             c.dtype);
  };
  in.q = slice(batch.q, in.H, c.q_start, c.q_len);
  in.k = slice(batch.k, in.Hkv, c.kv_start, c.kv_len);
  in.v = slice(batch.v, in.Hkv, c.kv_start, c.kv_len);
  in.dout = slice(batch.dout, in.H, c.q_start, c.q_len);
  // A plausible "final output" of the same shape and range as dO.
  in.out = slice(batch.dout, in.H, (c.q_start + 100) % (S - c.q_len), c.q_len);
  in.q_doc = reference::SliceSequence(batch.doc, in.B, S, 1, c.q_start, c.q_start + c.q_len);
  in.q_vis = reference::SliceSequence(batch.vision, in.B, S, 1, c.q_start, c.q_start + c.q_len);
  in.q_pad = reference::SliceSequence(batch.padding, in.B, S, 1, c.q_start, c.q_start + c.q_len);
  in.kv_doc = reference::SliceSequence(batch.doc, in.B, S, 1, c.kv_start, c.kv_start + c.kv_len);
  in.kv_vis = reference::SliceSequence(batch.vision, in.B, S, 1, c.kv_start, c.kv_start + c.kv_len);
  in.kv_pad =
      reference::SliceSequence(batch.padding, in.B, S, 1, c.kv_start, c.kv_start + c.kv_len);
  return in;
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) {
    if (std::isfinite(x)) m = std::fmax(m, std::fabs(x));
  }
  return m;
}

void ExpectClose(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                 double tolerance) {
  ASSERT_EQ(got.size(), want.size());
  const double scale = std::fmax(MaxAbs(want), 1e-30);
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << what << "[" << i << "]";
    if (std::isinf(got[i]) || std::isinf(want[i])) {
      ASSERT_EQ(got[i], want[i]) << what << "[" << i << "]";
      continue;
    }
    worst = std::fmax(worst, std::fabs(got[i] - want[i]) / scale);
  }
  EXPECT_LE(worst, tolerance) << what;
}

struct NamedChunkCase {
  std::string name;  // Spells the configuration.
  ChunkCase c;
};

void PrintTo(const NamedChunkCase& c, std::ostream* os) { *os << c.name; }

class CudaChunkVsCpuTest : public ::testing::TestWithParam<NamedChunkCase> {};

// Forward then backward of one chunk on both backends; backward adds to
// gradients that already hold values, as a ring's second step does.
TEST_P(CudaChunkVsCpuTest, MatchesCpuKernels) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const ChunkCase& c = GetParam().c;
  std::unique_ptr<CudaBackend> gpu = MakeBackendOrNull();
  ASSERT_NE(gpu, nullptr);
  std::unique_ptr<ChunkBackend> cpu_backend = testing::MakeCpuBackend();
  ASSERT_NE(cpu_backend, nullptr);
  ChunkInputs in = MakeChunkInputs(c);
  const int64_t D = c.head_dim;
  const DType dt = c.dtype;

  ForwardChunkArgs f;
  f.q = Ref(in.q, dt, in.B, in.H, c.q_len, D);
  f.k = Ref(in.k, dt, in.B, in.Hkv, c.kv_len, D);
  f.v = Ref(in.v, dt, in.B, in.Hkv, c.kv_len, D);
  f.q_meta = {in.q_doc, in.q_vis, in.q_pad, c.q_start};
  f.kv_meta = {in.kv_doc, in.kv_vis, in.kv_pad, c.kv_start};
  f.layer = c.layer;
  std::vector<float> out_cpu(in.B * in.H * c.q_len * D), lse_cpu(in.B * in.H * c.q_len);
  std::vector<float> out_gpu(out_cpu.size(), 7.0f), lse_gpu(lse_cpu.size(), 7.0f);
  f.out = out_cpu;
  f.lse = lse_cpu;
  ASSERT_TRUE(cpu_backend->Forward(f).ok());
  f.out = out_gpu;
  f.lse = lse_gpu;
  ASSERT_TRUE(gpu->Forward(f).ok());
  ExpectClose("partial O", out_gpu, out_cpu, OutputTolerance(dt));
  ExpectClose("partial LSE", lse_gpu, lse_cpu, 1e-5);

  // The chunk's own lse as the "final" one keeps P <= 1.
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  auto preset = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = uni(rng);
    return v;
  };
  const size_t q_elems = out_cpu.size();
  const size_t kv_elems = in.B * in.Hkv * c.kv_len * D;
  std::vector<float> dq_cpu = preset(q_elems), dk_cpu = preset(kv_elems), dv_cpu = preset(kv_elems);
  std::vector<float> dq_gpu = dq_cpu, dk_gpu = dk_cpu, dv_gpu = dv_cpu;
  BackwardChunkArgs bw;
  bw.q = f.q;
  bw.k = f.k;
  bw.v = f.v;
  bw.out = Ref(in.out, dt, in.B, in.H, c.q_len, D);
  bw.dout = Ref(in.dout, dt, in.B, in.H, c.q_len, D);
  bw.lse = lse_cpu;
  bw.q_meta = f.q_meta;
  bw.kv_meta = f.kv_meta;
  bw.layer = c.layer;
  bw.dq = dq_cpu;
  bw.dk = dk_cpu;
  bw.dv = dv_cpu;
  ASSERT_TRUE(cpu_backend->Backward(bw).ok());
  bw.dq = dq_gpu;
  bw.dk = dk_gpu;
  bw.dv = dv_gpu;
  ASSERT_TRUE(gpu->Backward(bw).ok());
  // Both sides carry the same presets; the tolerance is relative to the
  // largest total, so it is at least as strict as on the contribution alone.
  const double tol = GradientTolerance(dt) + reference::GradientTolerance(dt);
  ExpectClose("dQ", dq_gpu, dq_cpu, tol);
  ExpectClose("dK", dk_gpu, dk_cpu, tol);
  ExpectClose("dV", dv_gpu, dv_cpu, tol);
}

std::vector<NamedChunkCase> ChunkCases() {
  std::vector<NamedChunkCase> cases;
  const LayerConfig full = Layer(LayerKind::kFull, 128);
  const LayerConfig sliding = Layer(LayerKind::kSliding, 128, 100);
  const LayerConfig encoder = Layer(LayerKind::kFull, 128, 512, /*causal=*/false);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    // The query shard after the key chunk (a past chunk of a ring step).
    cases.push_back(
        {absl::StrCat(Tag(dt), "_D128_Lq96_Lk160_PastChunk"), {dt, 128, 300, 96, 40, 160, full}});
    // Overlapping ranges, window cutting through the chunk.
    cases.push_back({absl::StrCat(Tag(dt), "_D128_Lq130_Lk70_SlidingW100"),
                     {dt, 128, 150, 130, 120, 70, sliding}});
    // A future chunk under encoder-style attention.
    cases.push_back({absl::StrCat(Tag(dt), "_D128_Lq64_Lk200_NonCausalFuture"),
                     {dt, 128, 10, 64, 400, 200, encoder}});
  }
  LayerConfig d80 = Layer(LayerKind::kFull, 80);
  cases.push_back({"Bf16_D80_Lq50_Lk33_PastChunk", {DType::kBF16, 80, 200, 50, 100, 33, d80}});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Chunks, CudaChunkVsCpuTest, ::testing::ValuesIn(ChunkCases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace ringattn::kernels::cuda
