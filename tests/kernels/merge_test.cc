#include "kernels/merge.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::kernels {
namespace {

TEST(MergeTest, MatchesTheFormula) {
  std::vector<float> out = {1.0f, 2.0f};
  std::vector<float> lse = {0.5f};
  const std::vector<float> o_s = {3.0f, -1.0f};
  const std::vector<float> lse_s = {1.5f};
  ASSERT_TRUE(MergePartial(out, lse, o_s, lse_s, 2).ok());
  const double merged = std::log(std::exp(0.5) + std::exp(1.5));
  const double wa = std::exp(0.5 - merged), wb = std::exp(1.5 - merged);
  EXPECT_NEAR(lse[0], merged, 1e-6);
  EXPECT_NEAR(out[0], 1.0 * wa + 3.0 * wb, 1e-6);
  EXPECT_NEAR(out[1], 2.0 * wa - 1.0 * wb, 1e-6);
}

TEST(MergeTest, EmptySidesNeverMakeNaN) {
  // Row 0: both empty. Row 1: only the accumulator. Row 2: only the chunk.
  std::vector<float> out = {0.0f, 7.0f, 0.0f};
  std::vector<float> lse = {-INFINITY, 2.0f, -INFINITY};
  const std::vector<float> o_s = {0.0f, 0.0f, 5.0f};
  const std::vector<float> lse_s = {-INFINITY, -INFINITY, 3.0f};
  ASSERT_TRUE(MergePartial(out, lse, o_s, lse_s, 1).ok());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(lse[0], -INFINITY);
  EXPECT_EQ(out[1], 7.0f);
  EXPECT_EQ(lse[1], 2.0f);
  EXPECT_EQ(out[2], 5.0f);
  EXPECT_EQ(lse[2], 3.0f);
}

TEST(MergeTest, IsOrderIndependentUpToRounding) {
  const std::vector<float> a = {1.0f, -2.0f}, b = {0.5f, 4.0f}, c = {-3.0f, 1.0f};
  const std::vector<float> la = {0.1f}, lb = {2.0f}, lc = {-1.0f};
  std::vector<float> o1(2, 0.0f), l1 = {-INFINITY};
  std::vector<float> o2(2, 0.0f), l2 = {-INFINITY};
  for (auto [o, l] : {std::pair{&a, &la}, {&b, &lb}, {&c, &lc}}) {
    ASSERT_TRUE(MergePartial(o1, l1, *o, *l, 2).ok());
  }
  for (auto [o, l] : {std::pair{&c, &lc}, {&a, &la}, {&b, &lb}}) {
    ASSERT_TRUE(MergePartial(o2, l2, *o, *l, 2).ok());
  }
  EXPECT_NEAR(o1[0], o2[0], 1e-6);
  EXPECT_NEAR(o1[1], o2[1], 1e-6);
  EXPECT_NEAR(l1[0], l2[0], 1e-6);
}

TEST(MergeTest, SizeMismatchIsAnError) {
  std::vector<float> out(4), lse(2);
  const std::vector<float> o_s(3), lse_s(2);
  const absl::Status s = MergePartial(out, lse, o_s, lse_s, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("o_s"), absl::string_view::npos);
}

}  // namespace
}  // namespace ringattn::kernels
