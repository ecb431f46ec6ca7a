#include "server/ring/ring_attention.h"

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "kernels/backends.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "server/ring/transports/in_process_transport.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/ring/testing/ring_harness.h"

namespace ringattn::ring {
namespace {

using kernels::LayerConfig;
using kernels::LayerKind;
using kernels::reference::BatchShape;
using kernels::reference::RowLayout;

struct ParityCase {
  std::string name;
  int cp;
  int64_t batch;
  LayerConfig layer;
  batch::LayoutKind layout = batch::LayoutKind::kContiguous;
};

void PrintTo(const ParityCase& c, std::ostream* os) { *os << c.name; }

RowLayout ParityLayout(int64_t row) { return testing::RingTestLayout(row); }

std::vector<ParityCase> ParityCases() {
  std::vector<ParityCase> cases;
  for (int cp : {1, 2, 3, 4, 8}) {
    for (int64_t b : {1, 2}) {
      for (int64_t window : {int64_t{10}, int64_t{60}, int64_t{0}}) {
        LayerConfig layer;
        layer.kind = window > 0 ? LayerKind::kSliding : LayerKind::kFull;
        layer.window = window > 0 ? window : 512;
        layer.scale = 0.125f;
        const std::string kind =
            window > 0 ? "Sliding_W" + std::to_string(window) : std::string("Full");
        for (batch::LayoutKind layout :
             {batch::LayoutKind::kContiguous, batch::LayoutKind::kZigzag}) {
          cases.push_back({kind + "_B" + std::to_string(b) + "_Cp" + std::to_string(cp) + "_" +
                               std::string(batch::LayoutName(layout)),
                           cp, b, layer, layout});
        }
      }
    }
  }
  return cases;
}

class RingParityTest : public ::testing::TestWithParam<ParityCase> {};

// Forward O/LSE and backward dQ/dK/dV through the in-process ring equal the
// oracle of the unsharded problem, under every layout. S = 192: L = 24 at
// cp 8, so W = 10 is smaller than a shard (and than a zigzag half) and
// W = 60 spans several; H = 4 over Hkv = 2 (GQA); packed documents, images
// across shard and half-shard boundaries, padding at the end.
TEST_P(RingParityTest, MatchesOracle) {
  const ParityCase& c = GetParam();
  BatchShape shape{c.batch, 4, 2, 192, 64};
  std::vector<RowLayout> layouts;
  for (int64_t b = 0; b < c.batch; ++b) layouts.push_back(ParityLayout(b));
  const auto batch =
      kernels::reference::MakeSyntheticBatch(shape, layouts, kernels::DType::kF32, 5 + c.cp);
  absl::StatusOr<testing::RingRunResult> got =
      testing::RunInProcessRing(batch, c.layer, c.cp, 1, c.layout);
  ASSERT_TRUE(got.ok()) << got.status();
  kernels::testing::ExpectResultMatchesOracle(batch, c.layer, got->whole, /*backward=*/true);
  // Window-limited sliding layers exchange only ceil(W / L) chunks.
  const size_t steps = got->forward_stats[0].steps.size();
  if (c.layer.kind == LayerKind::kFull || c.cp == 1) {
    EXPECT_EQ(steps, static_cast<size_t>(c.cp));
  }
}

INSTANTIATE_TEST_SUITE_P(Matrix, RingParityTest, ::testing::ValuesIn(ParityCases()),
                         [](const auto& info) { return info.param.name; });

TEST(RingTest, Bf16RingMatchesOracle) {
  LayerConfig layer;
  layer.kind = LayerKind::kSliding;
  layer.window = 40;
  layer.scale = 0.125f;
  const auto batch = kernels::reference::MakeSyntheticBatch({1, 4, 2, 192, 64}, {ParityLayout(0)},
                                                            kernels::DType::kBF16, 9);
  absl::StatusOr<testing::RingRunResult> got = testing::RunInProcessRing(batch, layer, 4);
  ASSERT_TRUE(got.ok()) << got.status();
  kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, true);
}

// dK/dV accumulators travel in fp32, so the bf16 gradient error does not
// grow with the ring size.
TEST(RingTest, Bf16GradientErrorIsFlatInCp) {
  LayerConfig layer;
  layer.scale = 0.125f;
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {1, 4, 2, 192, 64}, {kernels::testing::SingleDocument(192)}, kernels::DType::kBF16, 6);
  const auto problem = kernels::reference::ToDenseProblem(batch, layer);
  const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
  const auto want = kernels::reference::DenseBackward(problem, dout);
  double err_cp1 = 0.0;
  for (int cp : {1, 2, 4, 8}) {
    absl::StatusOr<testing::RingRunResult> got = testing::RunInProcessRing(batch, layer, cp);
    ASSERT_TRUE(got.ok()) << got.status();
    const double err = std::max(kernels::reference::Compare(got->whole.dk, want.dk).relative(),
                                kernels::reference::Compare(got->whole.dv, want.dv).relative());
    if (cp == 1) err_cp1 = err;
    EXPECT_LE(err, 1.5 * err_cp1 + 1e-6) << "cp " << cp;
  }
}

// A rank whose whole shard is padding exchanges like every other and
// returns exact zeros.
TEST(RingTest, AllPaddingRankReturnsExactZeros) {
  LayerConfig layer;
  layer.scale = 0.125f;
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 192, 32}, {testing::RingTestLayout(0)}, kernels::DType::kF32, 8);
  absl::StatusOr<testing::RingRunResult> got = testing::RunInProcessRing(batch, layer, 4);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->forward_stats[3].steps.size(), 4u);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 144; i < 192; ++i) {
      EXPECT_EQ(got->whole.lse[h * 192 + i], -INFINITY);
      for (int64_t d = 0; d < 32; ++d) {
        ASSERT_EQ(got->whole.out[(h * 192 + i) * 32 + d], 0.0f);
        ASSERT_EQ(got->whole.dq[(h * 192 + i) * 32 + d], 0.0f);
        if (h == 0) {
          ASSERT_EQ(got->whole.dk[i * 32 + d], 0.0f);
          ASSERT_EQ(got->whole.dv[i * 32 + d], 0.0f);
        }
      }
    }
  }
}

// Under zigzag a short sequence leaves whole ranks (both their chunks)
// padding: they exchange like every other, return exact zeros, and the
// rest still matches the oracle.
TEST(RingTest, AllPaddingRanksUnderZigzagReturnExactZeros) {
  LayerConfig layer;
  layer.scale = 0.125f;
  kernels::reference::RowLayout row;
  row.doc_lengths = {20};  // Chunk 0 of 8 (24 positions each) holds them all.
  const auto batch =
      kernels::reference::MakeSyntheticBatch({1, 2, 1, 192, 32}, {row}, kernels::DType::kF32, 12);
  absl::StatusOr<testing::RingRunResult> got =
      testing::RunInProcessRing(batch, layer, 4, 1, batch::LayoutKind::kZigzag);
  ASSERT_TRUE(got.ok()) << got.status();
  kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, true);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(got->forward_stats[r].steps.size(), 4u);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 20; i < 192; ++i) {
      EXPECT_EQ(got->whole.lse[h * 192 + i], -INFINITY);
      for (int64_t d = 0; d < 32; ++d) {
        ASSERT_EQ(got->whole.out[(h * 192 + i) * 32 + d], 0.0f);
        ASSERT_EQ(got->whole.dq[(h * 192 + i) * 32 + d], 0.0f);
        if (h == 0) {
          ASSERT_EQ(got->whole.dk[i * 32 + d], 0.0f);
          ASSERT_EQ(got->whole.dv[i * 32 + d], 0.0f);
        }
      }
    }
  }
}

// Zigzag spreads a full causal layer's pairs evenly over the ranks; the
// step stats count what each rank computed.
TEST(RingTest, ZigzagGivesEveryRankTheSamePairs) {
  LayerConfig layer;
  layer.scale = 0.125f;
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 128, 32}, {kernels::testing::SingleDocument(128)}, kernels::DType::kF32, 2);
  absl::StatusOr<testing::RingRunResult> got =
      testing::RunInProcessRing(batch, layer, 4, 1, batch::LayoutKind::kZigzag);
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<int64_t> pairs;
  for (const RingStats& s : got->forward_stats) {
    int64_t n = 0;
    for (const StepStats& step : s.steps) n += step.pairs;
    pairs.push_back(n);
  }
  // 128 * 129 / 2 causal pairs over 2 heads, a quarter each.
  for (int r = 0; r < 4; ++r) EXPECT_EQ(pairs[r], 2 * 128 * 129 / 2 / 4) << "rank " << r;
}

// A sliding window that fits in a shard (no bidirectional images): the one
// exchange carries only the last W - 1 rows of the previous shard, forward
// and backward, and the results still match the oracle (packed documents,
// images, padding, GQA, B = 2).
TEST(RingTest, HaloExchangeMovesOnlyTheWindowsRowsAndMatchesTheOracle) {
  LayerConfig layer;
  layer.kind = LayerKind::kSliding;
  layer.window = 10;
  layer.scale = 0.125f;
  layer.vision_bidirectional = false;
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {2, 4, 2, 192, 64}, {ParityLayout(0), ParityLayout(1)}, kernels::DType::kF32, 31);
  for (int cp : {2, 3, 4, 8}) {
    SCOPED_TRACE("cp " + std::to_string(cp));
    absl::StatusOr<testing::RingRunResult> halo = testing::RunInProcessRing(batch, layer, cp);
    absl::StatusOr<testing::RingRunResult> whole =
        testing::RunInProcessRing(batch, layer, cp, 1, batch::LayoutKind::kContiguous, false);
    ASSERT_TRUE(halo.ok()) << halo.status();
    ASSERT_TRUE(whole.ok()) << whole.status();
    kernels::testing::ExpectResultMatchesOracle(batch, layer, halo->whole, true);
    for (int r = 0; r < cp; ++r) {
      const StepStats& h = halo->forward_stats[r].steps[0];
      const StepStats& w = whole->forward_stats[r].steps[0];
      ASSERT_EQ(halo->forward_stats[r].steps.size(), 2u);
      // K and V of 9 rows (B = 2, Hkv = 2, D = 64, fp32) and their metadata,
      // each part 8-byte aligned, against the whole shard's.
      const int64_t kv = 2 * 2 * 9 * 64 * 4;
      const int64_t meta = 2 * ((2 * 9 * 4 + 7) / 8 * 8) + (2 * 9 + 7) / 8 * 8;
      EXPECT_EQ(h.bytes_sent, 2 * kv + meta) << "rank " << r;
      EXPECT_LT(h.bytes_sent * 2, w.bytes_sent) << "rank " << r;
      // Backward: the halo's K/V and only its dK/dV home, no accumulator.
      int64_t halo_bwd = 0, whole_bwd = 0;
      for (const StepStats& s : halo->backward_stats[r].steps) halo_bwd += s.bytes_sent;
      for (const StepStats& s : whole->backward_stats[r].steps) whole_bwd += s.bytes_sent;
      EXPECT_EQ(halo_bwd, 2 * kv + meta + 2 * (kv / 4) * 4) << "rank " << r;
      EXPECT_LT(halo_bwd * 3, whole_bwd) << "rank " << r;
    }
  }
}

bool BitEqual(float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// The leak audit through the ring, per layout: perturbing every value of
// document 1 (Q, K, V, dO) leaves document 2's outputs and gradients
// bit-identical, even through sub-blocks and chunks that hold both.
void ExpectNoLeakThroughRing(const LayerConfig& layer, batch::LayoutKind kind) {
  const int64_t S = 192, D = 32, H = 4, Hkv = 2;
  kernels::reference::RowLayout row;
  row.doc_lengths = {100, 92};  // The boundary inside a shard and a zigzag half.
  row.images = {{80, 100}, {100, 120}};
  const auto base =
      kernels::reference::MakeSyntheticBatch({1, H, Hkv, S, D}, {row}, kernels::DType::kF32, 21);
  auto perturbed = base;
  auto perturb = [&](std::vector<float>& t, int64_t heads) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < 100; ++i) {
        for (int64_t d = 0; d < D; ++d) t[(h * S + i) * D + d] *= -0.5f;
      }
    }
  };
  perturb(perturbed.q, H);
  perturb(perturbed.k, Hkv);
  perturb(perturbed.v, Hkv);
  perturb(perturbed.dout, H);
  absl::StatusOr<testing::RingRunResult> a = testing::RunInProcessRing(base, layer, 4, 1, kind);
  absl::StatusOr<testing::RingRunResult> b =
      testing::RunInProcessRing(perturbed, layer, 4, 1, kind);
  ASSERT_TRUE(a.ok() && b.ok());
  int64_t changed_in_doc1 = 0;
  auto check = [&](const std::vector<float>& x, const std::vector<float>& y, int64_t heads,
                   int64_t inner, const char* what) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < S; ++i) {
        for (int64_t d = 0; d < inner; ++d) {
          const int64_t at = (h * S + i) * inner + d;
          if (i < 100) {
            changed_in_doc1 += !BitEqual(x[at], y[at]);
          } else {
            ASSERT_TRUE(BitEqual(x[at], y[at]))
                << what << " of document 2 changed at head " << h << " position " << i;
          }
        }
      }
    }
  };
  check(a->whole.out, b->whole.out, H, D, "out");
  check(a->whole.lse, b->whole.lse, H, 1, "lse");
  check(a->whole.dq, b->whole.dq, H, D, "dq");
  check(a->whole.dk, b->whole.dk, Hkv, D, "dk");
  check(a->whole.dv, b->whole.dv, Hkv, D, "dv");
  EXPECT_GT(changed_in_doc1, 1000) << "the perturbation must reach document 1";
}

TEST(RingTest, NoLeakAcrossDocumentsUnderEveryLayout) {
  for (batch::LayoutKind kind : {batch::LayoutKind::kContiguous, batch::LayoutKind::kZigzag}) {
    SCOPED_TRACE(std::string(batch::LayoutName(kind)));
    LayerConfig full;
    full.scale = 0.125f;
    ExpectNoLeakThroughRing(full, kind);
    LayerConfig sliding = full;
    sliding.kind = LayerKind::kSliding;
    sliding.window = 24;
    ExpectNoLeakThroughRing(sliding, kind);
  }
}

TEST(RingTest, SkippedStepsAreNotComputedButStillExchanged) {
  LayerConfig layer;  // Full causal.
  layer.scale = 0.125f;
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 128, 32}, {kernels::testing::SingleDocument(128)}, kernels::DType::kF32, 2);
  absl::StatusOr<testing::RingRunResult> got = testing::RunInProcessRing(batch, layer, 4);
  ASSERT_TRUE(got.ok()) << got.status();
  for (int r = 0; r < 4; ++r) {
    const RingStats& s = got->forward_stats[r];
    ASSERT_EQ(s.steps.size(), 4u);
    int computed = 0;
    for (const StepStats& step : s.steps) {
      computed += step.computed;
      if (!step.computed) {
        EXPECT_EQ(step.compute_seconds, 0.0);
      }
      if (step.step < 3) {
        EXPECT_GT(step.bytes_sent, 0);
      }
    }
    EXPECT_EQ(computed, r + 1) << "rank " << r << " computes its past chunks only";
  }
}

// Two sessions interleaved on the same ring (forward A, forward B, backward
// A, backward B) with ranks out of step: every buffer is keyed by call and
// step, so no call ever takes another's chunks, and each result equals the
// same call run alone, bit for bit.
TEST(RingTest, InterleavedSessionsDoNotMixChunks) {
  LayerConfig layer;
  layer.scale = 0.125f;
  const int cp = 3;
  const int64_t L = 32;
  const auto a = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 96, 32}, {kernels::testing::SingleDocument(96)}, kernels::DType::kF32, 1);
  const auto b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 96, 32}, {kernels::testing::SingleDocument(96)}, kernels::DType::kF32, 2);
  absl::StatusOr<testing::RingRunResult> alone_a = testing::RunInProcessRing(a, layer, cp);
  absl::StatusOr<testing::RingRunResult> alone_b = testing::RunInProcessRing(b, layer, cp);
  ASSERT_TRUE(alone_a.ok() && alone_b.ok());

  InProcessHub hub(cp);
  std::vector<std::vector<float>> dq_a(cp), dq_b(cp), dk_a(cp), dk_b(cp);
  std::vector<absl::Status> status(cp);
  std::vector<std::thread> threads;
  for (int r = 0; r < cp; ++r) {
    threads.emplace_back([&, r] {
      // Rank r starts late, so its peers' messages for both calls wait for it.
      std::this_thread::sleep_for(std::chrono::milliseconds(40 * r));
      auto cpu = kernels::MakeCpuBackend(1);
      kernels::ChunkBackend& backend = **cpu;
      auto t = hub.Connect(r);
      const auto sa = testing::SliceShard(a, cp, r);
      const auto sb = testing::SliceShard(b, cp, r);
      const RingCall ca{layer, false, 1, 100, absl::Seconds(30)};
      const RingCall cb{layer, false, 1, 101, absl::Seconds(30)};
      auto fa = RingForward(*t, backend, sa.Ref(a, L), ca);
      auto fb = RingForward(*t, backend, sb.Ref(b, L), cb);
      if (!fa.ok() || !fb.ok()) {
        status[r] = fa.ok() ? fb.status() : fa.status();
        return;
      }
      auto ga = RingBackward(*t, backend, sa.Ref(a, L), fa->out, std::as_bytes(std::span(sa.dout)),
                             fa->lse, ca);
      auto gb = RingBackward(*t, backend, sb.Ref(b, L), fb->out, std::as_bytes(std::span(sb.dout)),
                             fb->lse, cb);
      if (!ga.ok() || !gb.ok()) {
        status[r] = ga.ok() ? gb.status() : ga.status();
        return;
      }
      dq_a[r] = ga->dq;
      dq_b[r] = gb->dq;
      dk_a[r] = ga->dk;
      dk_b[r] = gb->dk;
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < cp; ++r) {
    ASSERT_TRUE(status[r].ok()) << status[r];
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t i = 0; i < L * 32; ++i) {
        const int64_t whole = (h * 96 + r * L) * 32 + i;
        ASSERT_EQ(dq_a[r][h * L * 32 + i], alone_a->whole.dq[whole]);
        ASSERT_EQ(dq_b[r][h * L * 32 + i], alone_b->whole.dq[whole]);
        if (h == 0) {
          ASSERT_EQ(dk_a[r][i], alone_a->whole.dk[r * L * 32 + i]);
          ASSERT_EQ(dk_b[r][i], alone_b->whole.dk[r * L * 32 + i]);
        }
      }
    }
  }
}

// A rank that dies mid-ring: every other rank returns an error within the
// timeout, none hangs.
TEST(RingTest, DeadRankMakesEveryOtherRankFailWithinTheTimeout) {
  LayerConfig layer;
  layer.scale = 0.125f;
  const int cp = 4;
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 128, 32}, {kernels::testing::SingleDocument(128)}, kernels::DType::kF32, 4);
  InProcessHub hub(cp);
  std::vector<absl::Status> status(cp);
  std::vector<double> seconds(cp);
  std::vector<std::thread> threads;
  for (int r = 0; r < cp; ++r) {
    threads.emplace_back([&, r] {
      auto t = hub.Connect(r);
      if (r == 2) {  // Dies before taking part.
        hub.Kill(2);
        return;
      }
      auto cpu = kernels::MakeCpuBackend(1);
      kernels::ChunkBackend& backend = **cpu;
      const auto shard = testing::SliceShard(batch, cp, r);
      RingCall call{layer, false, 1, 1, absl::Seconds(5)};
      const auto t0 = std::chrono::steady_clock::now();
      status[r] = RingForward(*t, backend, shard.Ref(batch, 32), call).status();
      seconds[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  for (auto& t : threads) t.join();
  for (int r : {0, 1, 3}) {
    EXPECT_FALSE(status[r].ok()) << "rank " << r;
    EXPECT_LT(seconds[r], 5.0 + 1.0) << "rank " << r;
    EXPECT_NE(status[r].message().find("rank"), absl::string_view::npos) << status[r];
  }
}

}  // namespace
}  // namespace ringattn::ring
