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
// Rank r's segments under the config's layout.
std::vector<batch::Segment> SegmentsOf(const ScheduleConfig& c, int rank) {
  absl::StatusOr<batch::ShardLayout> layout =
      batch::ShardLayout::Make(c.layout, c.cp * c.shard_len, c.shard_len, c.cp);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return layout.ok() ? layout->Segments(rank) : std::vector<batch::Segment>{};
}

// Allowed pairs between two position ranges, by brute force; with `any`,
// stops at the first.
int64_t AllowedPairs(const ScheduleConfig& c, const batch::Segment& qs, const batch::Segment& ks,
                     int32_t vision, bool any) {
  const kernels::MaskRule rule = kernels::MaskRuleFor(c.layer);
  int64_t pairs = 0;
  for (int64_t q = qs.start; q < qs.start + qs.len; ++q) {
    for (int64_t k = ks.start; k < ks.start + ks.len; ++k) {
      pairs += kernels::Allowed(rule, {q, 1, vision, false}, {k, 1, vision, false});
      if (any && pairs > 0) return pairs;
    }
  }
  return pairs;
}

bool NeededByBruteForce(const ScheduleConfig& c, int q_rank, int k_rank) {
  const int32_t vision = c.batch_has_vision ? 0 : -1;
  for (const batch::Segment& qs : SegmentsOf(c, q_rank)) {
    for (const batch::Segment& ks : SegmentsOf(c, k_rank)) {
      if (AllowedPairs(c, qs, ks, vision, true) > 0) return true;
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
  if (rng() % 2) {
    c.layout = batch::LayoutKind::kZigzag;
    c.shard_len += c.shard_len % 2;
  }
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
  int64_t pairs = 0;
  for (const batch::Segment& qs : SegmentsOf(c, q_rank)) {
    for (const batch::Segment& ks : SegmentsOf(c, k_rank)) {
      pairs += AllowedPairs(c, qs, ks, -1, false);
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
      const std::vector<batch::Segment> mine = SegmentsOf(c, r);
      for (const RingStep& step : s->steps) {
        const int64_t want = step.compute ? PositionPairsByBruteForce(c, r, step.chunk_owner) : 0;
        ASSERT_EQ(step.pairs, want)
            << "trial " << trial << " rank " << r << " chunk " << step.chunk_owner << " L "
            << c.shard_len << " W " << c.layer.window << " causal " << c.layer.causal;
        // Exactly the sub-blocks some pair may attend are computed, each
        // with its own pairs.
        const std::vector<batch::Segment> theirs = SegmentsOf(c, step.chunk_owner);
        const int32_t vision = c.batch_has_vision ? 0 : -1;
        size_t b = 0;
        for (size_t qs = 0; qs < mine.size(); ++qs) {
          for (size_t ks = 0; ks < theirs.size(); ++ks) {
            if (AllowedPairs(c, mine[qs], theirs[ks], vision, true) == 0) continue;
            ASSERT_LT(b, step.blocks.size()) << "trial " << trial;
            EXPECT_EQ(step.blocks[b].q_segment, static_cast<int>(qs));
            EXPECT_EQ(step.blocks[b].k_segment, static_cast<int>(ks));
            EXPECT_EQ(step.blocks[b].pairs, AllowedPairs(c, mine[qs], theirs[ks], -1, false));
            ++b;
          }
        }
        EXPECT_EQ(b, step.blocks.size()) << "trial " << trial << " a block no pair needs";
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

// Zigzag on a full causal layer: every rank holds as many allowed pairs as
// every other (chunks r and 2cp-1-r), where contiguous leaves the last rank
// about cp times the first's.
TEST(ScheduleTest, ZigzagBalancesCausalPairs) {
  for (int cp : {2, 3, 4, 8}) {
    int64_t first = -1;
    for (int r = 0; r < cp; ++r) {
      ScheduleConfig c;
      c.cp = cp;
      c.rank = r;
      c.shard_len = 64;
      c.layout = batch::LayoutKind::kZigzag;
      absl::StatusOr<RingSchedule> s = MakeSchedule(c);
      ASSERT_TRUE(s.ok());
      EXPECT_EQ(s->exchanges, cp - 1);
      int64_t pairs = 0;
      for (const RingStep& step : s->steps) pairs += step.pairs;
      if (first < 0) first = pairs;
      EXPECT_EQ(pairs, first) << "cp " << cp << " rank " << r;
    }
  }
}

// A zigzag rank's second chunk needs the chunk before it, held by the next
// rank: a sliding layer under zigzag exchanges all the way round, and the
// count still agrees on every rank.
TEST(ScheduleTest, ZigzagSlidingLayerExchangesAllTheWayRound) {
  ScheduleConfig c;
  c.cp = 4;
  c.shard_len = 512;
  c.layout = batch::LayoutKind::kZigzag;
  c.layer.kind = kernels::LayerKind::kSliding;
  c.layer.window = 64;
  for (int r = 0; r < 4; ++r) {
    c.rank = r;
    EXPECT_EQ(MakeSchedule(c)->exchanges, 3);
  }
}

TEST(ScheduleTest, HaloOnlyWhereTheWindowFitsAContiguousShard) {
  ScheduleConfig c;
  c.cp = 4;
  c.shard_len = 4096;
  c.layer.kind = kernels::LayerKind::kSliding;
  c.layer.window = 512;
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 511);
  c.halo_exchange = false;
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 0);
  c.halo_exchange = true;
  c.layer.window = 4096;  // W - 1 rows: still less than a shard.
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 4095);
  c.layer.window = 4097;  // Reaches two shards back.
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 0);
  c.layer.window = 512;
  c.batch_has_vision = true;  // Bidirectional images may reach anywhere.
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 0);
  c.batch_has_vision = false;
  c.layout = batch::LayoutKind::kZigzag;
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 0);
  c.layout = batch::LayoutKind::kContiguous;
  c.cp = 1;
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 0);
  c.cp = 2;
  c.layer.kind = kernels::LayerKind::kFull;
  EXPECT_EQ(MakeSchedule(c)->halo_rows, 0);
}

TEST(ScheduleTest, BadConfigsAreErrors) {
  ScheduleConfig c;
  c.cp = 2;
  c.rank = 2;
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.rank = 0;
  c.shard_len = 0;
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.shard_len = 3;
  c.layout = batch::LayoutKind::kZigzag;  // Needs an even L.
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
  c.layout = batch::LayoutKind::kContiguous;
  c.shard_len = 4;
  c.layer.dropout = 0.1f;
  EXPECT_EQ(MakeSchedule(c).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ringattn::ring
