#include "kernels/reference/compare.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::kernels::reference {
namespace {

constexpr float kInfF = std::numeric_limits<float>::infinity();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNaNF = std::numeric_limits<float>::quiet_NaN();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

ErrorStats CompareOf(const std::vector<float>& got, const std::vector<double>& want) {
  return Compare(got, want);
}

TEST(CompareTest, IdenticalValuesHaveNoError) {
  const ErrorStats e = CompareOf({1.0f, -2.5f, 0.0f, 3e6f}, {1.0, -2.5, 0.0, 3e6});
  EXPECT_EQ(e.max_abs_err, 0.0);
  EXPECT_EQ(e.max_ref, 3e6);
  EXPECT_EQ(e.nans, 0);
  EXPECT_EQ(e.mismatched_infinities, 0);
  EXPECT_EQ(e.relative(), 0.0);
  EXPECT_TRUE(e.Within(0.0));
}

TEST(CompareTest, MaxAbsoluteErrorAndLargestOracleMagnitude) {
  // Errors 0, 0.5, 1; magnitudes of the oracle 1, 2, 4: the largest of each,
  // from different elements.
  const ErrorStats e = CompareOf({1.0f, 2.5f, -3.0f}, {1.0, 2.0, -4.0});
  EXPECT_EQ(e.max_abs_err, 1.0);
  EXPECT_EQ(e.max_ref, 4.0);
  EXPECT_EQ(e.relative(), 0.25);
}

TEST(CompareTest, ErrorIsTakenInDoubleAgainstTheFloatResult) {
  const ErrorStats e = CompareOf({0.1f}, {0.1});
  EXPECT_EQ(e.max_abs_err, std::fabs(static_cast<double>(0.1f) - 0.1));
  EXPECT_GT(e.max_abs_err, 0.0);
}

TEST(CompareTest, ToleranceVerdictIsRelativeAndInclusive) {
  const ErrorStats e = CompareOf({1.0f, 2.5f, -3.0f}, {1.0, 2.0, -4.0});  // relative 0.25
  EXPECT_TRUE(e.Within(0.25));
  EXPECT_TRUE(e.Within(1.0));
  EXPECT_FALSE(e.Within(0.2499));
  EXPECT_FALSE(e.Within(0.0));
}

TEST(CompareTest, AllZeroOracleDividesByOne) {
  const ErrorStats e = CompareOf({0.5f, -0.25f}, {0.0, 0.0});
  EXPECT_EQ(e.max_ref, 0.0);
  EXPECT_EQ(e.relative(), 0.5);
  EXPECT_TRUE(e.Within(0.5));
  EXPECT_FALSE(e.Within(0.4));
}

TEST(CompareTest, EmptyInputsAreExact) {
  const ErrorStats e = CompareOf({}, {});
  EXPECT_EQ(e.max_abs_err, 0.0);
  EXPECT_EQ(e.relative(), 0.0);
  EXPECT_TRUE(e.Within(0.0));
}

TEST(CompareTest, NaNInTheResultIsCountedAndFailsAnyTolerance) {
  const ErrorStats e = CompareOf({kNaNF, 1.0f, kNaNF}, {0.0, 1.0, 2.0});
  EXPECT_EQ(e.nans, 2);
  EXPECT_EQ(e.max_abs_err, 0.0) << "a NaN is not an error magnitude";
  EXPECT_FALSE(e.Within(1e30));
}

TEST(CompareTest, NaNInTheOracleIsNeverAMatch) {
  const ErrorStats e = CompareOf({1.0f, 2.0f}, {kNaN, 2.0});
  EXPECT_FALSE(e.Within(1e30)) << "a finite result against a NaN oracle value passed";
}

TEST(CompareTest, EqualInfinitiesAreExactAndLeaveTheMagnitudesAlone) {
  const ErrorStats e = CompareOf({-kInfF, 1.0f, kInfF}, {-kInf, 2.0, kInf});
  EXPECT_EQ(e.mismatched_infinities, 0);
  EXPECT_EQ(e.max_abs_err, 1.0);
  EXPECT_EQ(e.max_ref, 2.0);
  EXPECT_TRUE(e.Within(0.5));
}

TEST(CompareTest, InfinityOnOneSideOnlyIsAMismatch) {
  EXPECT_EQ(CompareOf({-kInfF}, {0.0}).mismatched_infinities, 1);
  EXPECT_EQ(CompareOf({0.0f}, {-kInf}).mismatched_infinities, 1);
  EXPECT_EQ(CompareOf({kInfF}, {-kInf}).mismatched_infinities, 1);
  EXPECT_EQ(CompareOf({-kInfF}, {kInf}).mismatched_infinities, 1);
  EXPECT_EQ(CompareOf({kInfF}, {1e300}).mismatched_infinities, 1);
  const ErrorStats e = CompareOf({-kInfF, 0.0f, 5.0f}, {-kInf, -kInf, kInf});
  EXPECT_EQ(e.mismatched_infinities, 2);
  EXPECT_FALSE(e.Within(1e30));
}

TEST(CompareTest, SizeMismatchFailsEvenWhenThePrefixMatches) {
  const ErrorStats longer = CompareOf({1.0f, 2.0f, 3.0f}, {1.0, 2.0});
  EXPECT_EQ(longer.max_abs_err, 0.0);
  EXPECT_FALSE(longer.Within(1e30));
  const ErrorStats shorter = CompareOf({1.0f}, {1.0, 2.0});
  EXPECT_FALSE(shorter.Within(1e30));
  EXPECT_FALSE(CompareOf({}, {1.0}).Within(1e30));
}

TEST(CompareTest, SizeMismatchStillComparesTheCommonPrefix) {
  const ErrorStats e = CompareOf({1.0f, 3.0f, 100.0f}, {1.0, 2.0});
  EXPECT_EQ(e.max_abs_err, 1.0);
  EXPECT_EQ(e.max_ref, 2.0);
}

// SPEC §6: fp32 1e-5; bf16/fp16 outputs add the unit roundoff of the format
// (2^-8, 2^-11), gradients twice it.
TEST(ToleranceTest, OutputTolerancesAreTheStatedOnes) {
  EXPECT_EQ(OutputTolerance(DType::kF32), 1e-5);
  EXPECT_EQ(OutputTolerance(DType::kBF16), 1e-5 + 1.0 / 256);
  EXPECT_EQ(OutputTolerance(DType::kF16), 1e-5 + 1.0 / 2048);
}

TEST(ToleranceTest, GradientTolerancesAreTheStatedOnes) {
  EXPECT_EQ(GradientTolerance(DType::kF32), 1e-5);
  EXPECT_EQ(GradientTolerance(DType::kBF16), 1e-5 + 2.0 / 256);
  EXPECT_EQ(GradientTolerance(DType::kF16), 1e-5 + 2.0 / 2048);
}

TEST(ToleranceTest, NarrowerFormatsAreLooser) {
  for (auto tol : {OutputTolerance, GradientTolerance}) {
    EXPECT_GT(tol(DType::kBF16), tol(DType::kF16));
    EXPECT_GT(tol(DType::kF16), tol(DType::kF32));
  }
  EXPECT_GE(GradientTolerance(DType::kBF16), OutputTolerance(DType::kBF16));
}

}  // namespace
}  // namespace ringattn::kernels::reference
