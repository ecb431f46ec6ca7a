#include "server/batch/shard_layout.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::batch {
namespace {

// Every layout is a bijection between global positions [0, P) and (rank,
// local offset) pairs with local offsets [0, L) on every rank; segments
// are sorted; the runs partition [0, P) in order and name the same places.
TEST(ShardLayoutTest, EveryLayoutIsABijection) {
  for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag}) {
    for (int cp = 1; cp <= 8; ++cp) {
      for (int64_t L : {2, 4, 6, 24, 64}) {
        for (int64_t seq_len : {int64_t{0}, int64_t{1}, cp * L / 2 + 1, cp * L}) {
          absl::StatusOr<ShardLayout> layout = ShardLayout::Make(kind, seq_len, L, cp);
          ASSERT_TRUE(layout.ok()) << layout.status();
          const int64_t P = cp * L;
          // owner[p] = (rank, local) of global position p, set once.
          std::vector<std::pair<int, int64_t>> owner(P, {-1, -1});
          for (int r = 0; r < cp; ++r) {
            int64_t local = 0, real = 0, last_end = -1;
            for (const Segment& s : layout->Segments(r)) {
              EXPECT_GE(s.start, last_end) << "segments out of order";
              last_end = s.start + s.len;
              for (int64_t p = s.start; p < s.start + s.len; ++p) {
                ASSERT_GE(p, 0);
                ASSERT_LT(p, P);
                ASSERT_EQ(owner[p].first, -1) << "position " << p << " held twice";
                owner[p] = {r, local++};
                real += p < seq_len;
              }
            }
            EXPECT_EQ(local, L) << LayoutName(kind) << " cp " << cp << " rank " << r;
            EXPECT_EQ(layout->RealLen(r), real);
          }
          int64_t next = 0;
          for (const batch::Run& run : layout->Runs()) {
            EXPECT_EQ(run.start, next) << "runs leave a gap";
            next = run.start + run.len;
            for (int64_t p = run.start; p < run.start + run.len; ++p) {
              ASSERT_EQ(owner[p].first, run.rank);
              ASSERT_EQ(owner[p].second, run.local + (p - run.start));
              const batch::Run& of = layout->RunOf(p);
              ASSERT_EQ(of.start, run.start);
            }
          }
          EXPECT_EQ(next, P);
        }
      }
    }
  }
}

TEST(ShardLayoutTest, ZigzagRankHoldsChunksRAndItsMirror) {
  absl::StatusOr<ShardLayout> layout = ShardLayout::Make(LayoutKind::kZigzag, 64, 16, 4);
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->Segments(1).size(), 2u);
  EXPECT_EQ(layout->Segments(1)[0].start, 8);   // chunk 1
  EXPECT_EQ(layout->Segments(1)[1].start, 48);  // chunk 6
  EXPECT_EQ(layout->Segments(1)[1].len, 8);
  // Contiguous: one segment [r*L, (r+1)*L).
  const ShardLayout contiguous(64, 4);
  ASSERT_EQ(contiguous.Segments(2).size(), 1u);
  EXPECT_EQ(contiguous.Segments(2)[0].start, 32);
  EXPECT_EQ(contiguous.kind(), LayoutKind::kContiguous);
}

TEST(ShardLayoutTest, BadLayoutsAreErrors) {
  EXPECT_FALSE(ShardLayout::Make(LayoutKind::kZigzag, 6, 3, 2).ok());  // odd L
  EXPECT_FALSE(ShardLayout::Make(LayoutKind::kContiguous, 9, 4, 2).ok());
  EXPECT_FALSE(ShardLayout::Make(LayoutKind::kContiguous, 0, 4, 0).ok());
  EXPECT_FALSE(ShardLayout::Make(LayoutKind::kContiguous, 0, 0, 2).ok());
}

}  // namespace
}  // namespace ringattn::batch
