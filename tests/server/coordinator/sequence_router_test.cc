#include "server/coordinator/sequence_router.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::coordinator {
namespace {

// Rank r's expected bytes: its slice of the sequence padded with zeros.
std::vector<std::byte> ExpectedShard(const std::vector<std::byte>& whole, int64_t outer,
                                     int64_t seq_len, int64_t shard_len, int rank, int64_t pb) {
  std::vector<std::byte> out;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t p = rank * shard_len; p < (rank + 1) * shard_len; ++p) {
      for (int64_t b = 0; b < pb; ++b) {
        out.push_back(p < seq_len ? whole[(o * seq_len + p) * pb + b] : std::byte{0});
      }
    }
  }
  return out;
}

// Rank r's expected bytes under zigzag: chunks r and 2cp-1-r of L/2, in
// that order, padded with zeros.
std::vector<std::byte> ExpectedZigzagShard(const std::vector<std::byte>& whole, int64_t outer,
                                           int64_t seq_len, int64_t shard_len, int cp, int rank,
                                           int64_t pb) {
  const int64_t half = shard_len / 2;
  std::vector<std::byte> out;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t chunk : {int64_t{rank}, 2 * int64_t{cp} - 1 - rank}) {
      for (int64_t p = chunk * half; p < (chunk + 1) * half; ++p) {
        for (int64_t b = 0; b < pb; ++b) {
          out.push_back(p < seq_len ? whole[(o * seq_len + p) * pb + b] : std::byte{0});
        }
      }
    }
  }
  return out;
}

TEST(SequenceRouterTest, ZigzagRanksGetTheirTwoChunksWhateverThePieceSizes) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    const int cp = 1 + static_cast<int>(rng() % 5);
    const int64_t outer = 1 + static_cast<int64_t>(rng() % 4);
    const int64_t seq_len = 1 + static_cast<int64_t>(rng() % 40);
    const int64_t padded = (seq_len + 2 * cp - 1) / (2 * cp) * (2 * cp);
    const int64_t shard_len = padded / cp;
    const int64_t pb = 1 + static_cast<int64_t>(rng() % 9);
    std::vector<std::byte> whole(static_cast<size_t>(outer * seq_len * pb));
    for (auto& b : whole) b = static_cast<std::byte>(1 + rng() % 255);

    absl::StatusOr<batch::ShardLayout> layout =
        batch::ShardLayout::Make(batch::LayoutKind::kZigzag, seq_len, shard_len, cp);
    ASSERT_TRUE(layout.ok()) << layout.status();
    SequenceRouter router(outer, *layout, pb);
    std::vector<std::vector<std::byte>> got(cp);
    size_t at = 0;
    while (at < whole.size()) {
      const size_t n = std::min<size_t>(whole.size() - at, 1 + rng() % 50);
      ASSERT_TRUE(router.Add(std::span(whole).subspan(at, n),
                             [&](int rank, std::span<const std::byte> run) {
                               got[rank].insert(got[rank].end(), run.begin(), run.end());
                               return true;
                             }));
      at += n;
    }
    EXPECT_TRUE(router.done());
    for (int r = 0; r < cp; ++r) {
      EXPECT_EQ(got[r], ExpectedZigzagShard(whole, outer, seq_len, shard_len, cp, r, pb))
          << "trial " << trial << " rank " << r << " of " << cp << ", S=" << seq_len;
    }
  }
}

TEST(SequenceRouterTest, EveryRankGetsItsPaddedSliceWhateverThePieceSizes) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int cp = 1 + static_cast<int>(rng() % 5);
    const int64_t outer = 1 + static_cast<int64_t>(rng() % 4);
    const int64_t seq_len = 1 + static_cast<int64_t>(rng() % 40);
    const int64_t padded = (seq_len + 2 * cp - 1) / (2 * cp) * (2 * cp);
    const int64_t shard_len = padded / cp;
    const int64_t pb = 1 + static_cast<int64_t>(rng() % 9);
    std::vector<std::byte> whole(static_cast<size_t>(outer * seq_len * pb));
    for (auto& b : whole) b = static_cast<std::byte>(1 + rng() % 255);

    SequenceRouter router(outer, seq_len, shard_len, cp, pb);
    std::vector<std::vector<std::byte>> got(cp);
    size_t at = 0;
    while (at < whole.size()) {
      const size_t n = std::min<size_t>(whole.size() - at, 1 + rng() % 50);
      ASSERT_FALSE(router.done());
      ASSERT_TRUE(router.Add(std::span(whole).subspan(at, n),
                             [&](int rank, std::span<const std::byte> run) {
                               got[rank].insert(got[rank].end(), run.begin(), run.end());
                               return true;
                             }));
      at += n;
    }
    EXPECT_TRUE(router.done());
    for (int r = 0; r < cp; ++r) {
      EXPECT_EQ(got[r], ExpectedShard(whole, outer, seq_len, shard_len, r, pb))
          << "trial " << trial << " rank " << r << " of " << cp << ", S=" << seq_len
          << " L=" << shard_len;
    }
  }
}

TEST(SequenceRouterTest, ARankPastTheSequenceGetsOnlyZeros) {
  // S = 2, cp = 4: P = 8, L = 2; ranks 1-3 hold padding only.
  SequenceRouter router(1, 2, 2, 4, 1);
  std::vector<std::vector<std::byte>> got(4);
  const std::vector<std::byte> whole = {std::byte{7}, std::byte{9}};
  ASSERT_TRUE(router.Add(whole, [&](int rank, std::span<const std::byte> run) {
    got[rank].insert(got[rank].end(), run.begin(), run.end());
    return true;
  }));
  EXPECT_EQ(got[0], whole);
  for (int r = 1; r < 4; ++r) EXPECT_EQ(got[r], std::vector<std::byte>(2, std::byte{0}));
}

TEST(SequenceRouterTest, StopsWhenTheReceiverRefusesAndRefusesBytesPastTheEnd) {
  SequenceRouter router(1, 4, 2, 2, 1);
  std::vector<std::byte> four(4, std::byte{1});
  int calls = 0;
  EXPECT_FALSE(router.Add(four, [&](int, std::span<const std::byte>) {
    ++calls;
    return false;
  }));
  EXPECT_EQ(calls, 1);

  SequenceRouter whole(1, 4, 2, 2, 1);
  auto keep = [](int, std::span<const std::byte>) { return true; };
  ASSERT_TRUE(whole.Add(four, keep));
  EXPECT_TRUE(whole.done());
  EXPECT_FALSE(whole.Add(std::span(four).first(1), keep));
}

}  // namespace
}  // namespace ringattn::coordinator
