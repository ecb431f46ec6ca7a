#include "server/ring/schedule.h"

#include <limits>
#include <random>
#include <set>

#include "gtest/gtest.h"
#include "kernels/mask.h"

namespace ringattn::ring {
namespace {

// Brute force: can any (query of shard q_rank, key of chunk k_rank) pair
// attend, with metadata as permissive as it gets (one document, no padding,
// every token in one image block when the batch holds vision tokens)?
bool NeededByBruteForce(const ScheduleConfig& c, int q_rank, int k_rank) {
  const kernels::MaskRule rule = kernels::MaskRuleFor(c.layer);
  const int32_t vision = c.batch_has_vision ? 0 : -1;
  const int64_t L = c.shard_len;
  for (int64_t q = q_rank * L; q < (q_rank + 1) * L; ++q) {
    for (int64_t k = k_rank * L; k < (k_rank + 1) * L; ++k) {
      if (kernels::Allowed(rule, {q, 1, vision, false}, {k, 1, vision, false})) return true;
    }
  }
  return false;
}

ScheduleConfig RandomConfig(std::mt19937& rng) {
  ScheduleConfig c;
  c.cp = 1 + static_cast<int>(rng() % 9);
  c.shard_len = 1 + static_cast<int64_t>(rng() % 24);
  c.layer.kind = rng() % 2 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
  c.layer.window = 1 + static_cast<int64_t>(rng() % 80);
  c.layer.causal = rng() % 4 != 0;
  c.layer.vision_bidirectional = rng() % 2;
  c.batch_has_vision = rng() % 3 == 0;
  return c;
}

TEST(ScheduleTest, ComputesExactlyTheNeededChunksOnEveryRank) {
  std::mt19937 rng(77);
  int limited = 0, skipped = 0;
  for (int trial = 0; trial < 600; ++trial) {
    ScheduleConfig c = RandomConfig(rng);
    int exchanges = -1;
    for (int r = 0; r < c.cp; ++r) {
      c.rank = r;
      absl::StatusOr<RingSchedule> s = MakeSchedule(c);
      ASSERT_TRUE(s.ok()) << s.status();
      // Same number of exchanges on every rank, or the ring deadlocks.
      if (exchanges < 0) exchanges = s->exchanges;
      ASSERT_EQ(s->exchanges, exchanges) << "trial " << trial;
      ASSERT_EQ(s->steps.size(), static_cast<size_t>(s->exchanges + 1));
      std::set<int> computed, held;
      for (const RingStep& step : s->steps) {
        ASSERT_EQ(step.chunk_owner, ((r - step.step) % c.cp + c.cp) % c.cp);
        ASSERT_TRUE(held.insert(step.chunk_owner).second) << "chunk held twice";
        if (step.compute) computed.insert(step.chunk_owner);
        skipped += !step.compute;
      }
      for (int o = 0; o < c.cp; ++o) {
        const bool needed = NeededByBruteForce(c, r, o);
        ASSERT_EQ(computed.count(o) == 1, needed)
            << "trial " << trial << " rank " << r << " chunk " << o << " cp " << c.cp << " L "
            << c.shard_len << " W " << c.layer.window;
      }
      // Gradients go home: whoever holds chunk r last sends it to r.
      const int holder = (r + s->exchanges) % c.cp;
      EXPECT_EQ(s->grad_from, holder);
      EXPECT_EQ(s->grad_home, ((r - s->exchanges) % c.cp + c.cp) % c.cp);
    }
    limited += exchanges < c.cp - 1;
  }
  EXPECT_GT(limited, 20);  // The window-limited path was exercised.
  EXPECT_GT(skipped, 100);
}

// Brute force: the pairs of shard q_rank and chunk k_rank that position
// alone allows (one document, no padding, no image).
int64_t PositionPairsByBruteForce(const ScheduleConfig& c, int q_rank, int k_rank) {
  const kernels::MaskRule rule = kernels::MaskRuleFor(c.layer);
  const int64_t L = c.shard_len;
  int64_t pairs = 0;
  for (int64_t q = q_rank * L; q < (q_rank + 1) * L; ++q) {
    for (int64_t k = k_rank * L; k < (k_rank + 1) * L; ++k) {
      pairs += kernels::Allowed(rule, {q, 1, -1, false}, {k, 1, -1, false});
    }
  }
  return pairs;
}

// The work a step's compute time is weighed against (the straggler alert
// divides by it): exactly the allowed pairs of every computed step.
TEST(ScheduleTest, StepsCountThePairsThePositionRulesAllow) {
  std::mt19937 rng(78);
  for (int trial = 0; trial < 300; ++trial) {
    ScheduleConfig c = RandomConfig(rng);
    for (int r = 0; r < c.cp; ++r) {
      c.rank = r;
      absl::StatusOr<RingSchedule> s = MakeSchedule(c);
      ASSERT_TRUE(s.ok()) << s.status();
      for (const RingStep& step : s->steps) {
        const int64_t want = step.compute ? PositionPairsByBruteForce(c, r, step.chunk_owner) : 0;
        ASSERT_EQ(step.pairs, want)
            << "trial " << trial << " rank " << r << " chunk " << step.chunk_owner << " L "
            << c.shard_len << " W " << c.layer.window << " causal " << c.layer.causal;
      }
    }
  }
  // Causal, L = 4: the diagonal chunk allows 4 + 3 + 2 + 1 pairs, a past one 16.
  ScheduleConfig c;
  c.cp = 2;
  c.rank = 1;
  c.shard_len = 4;
  absl::StatusOr<RingSchedule> s = MakeSchedule(c);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->steps[0].pairs, 10);
  EXPECT_EQ(s->steps[1].pairs, 16);
}

TEST(ScheduleTest, SlidingLayerExchangesStopAtTheWindow) {
  ScheduleConfig c;
  c.cp = 8;
  c.shard_len = 512;
  c.layer.kind = kernels::LayerKind::kSliding;
  c.layer.window = 512;
  absl::StatusOr<RingSchedule> s = MakeSchedule(c);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->exchanges, 1);
  c.layer.window = 1025;
  EXPECT_EQ(MakeSchedule(c)->exchanges, 3);
  c.batch_has_vision = true;  // Bidirectional images: every chunk may matter.
  EXPECT_EQ(MakeSchedule(c)->exchanges, 7);
  c.layer.vision_bidirectional = false;
  EXPECT_EQ(MakeSchedule(c)->exchanges, 3);
  // A window of "no limit" (any int64 the API accepts) means every chunk.
  c.layer.window = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(MakeSchedule(c)->exchanges, 7);
  c.shard_len = 1;
  EXPECT_EQ(MakeSchedule(c)->exchanges, 7);
}

TEST(ScheduleTest, CausalFutureChunksAreSkippedButStillHeld) {
  ScheduleConfig c;
  c.cp = 4;
  c.rank = 1;
  c.shard_len = 16;
  absl::StatusOr<RingSchedule> s = MakeSchedule(c);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->steps.size(), 4u);
  EXPECT_TRUE(s->steps[0].compute);   // own chunk 1
  EXPECT_TRUE(s->steps[1].compute);   // chunk 0
  EXPECT_FALSE(s->steps[2].compute);  // chunk 3: future
  EXPECT_FALSE(s->steps[3].compute);  // chunk 2: future
}

TEST(ScheduleTest, BadConfigsAreErrors) {
  ScheduleConfig c;
  c.cp = 2;
  c.rank = 2;
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.rank = 0;
  c.shard_len = 0;
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.shard_len = 4;
  c.layer.dropout = 0.1f;
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ringattn::ring
