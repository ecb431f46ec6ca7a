#include "kernels/convert.h"

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace ringattn::kernels {
namespace {

// GCC's _Float16 conversions are the IEEE reference here.
TEST(ConvertTest, F16ToF32IsExactForEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 ref;
    const auto bits = static_cast<uint16_t>(h);
    std::memcpy(&ref, &bits, sizeof(ref));
    const float want = static_cast<float>(ref);
    const float got = F16ToF32(bits);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      EXPECT_EQ(FloatBits(got), FloatBits(want)) << h;
    }
  }
}

TEST(ConvertTest, F32ToF16RoundsToNearestEven) {
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    // Random bit patterns cover normals, subnormals, overflow, inf and NaN.
    const float f = BitsFloat(static_cast<uint32_t>(rng()));
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &ref, sizeof(want));
    const uint16_t got = F32ToF16(f);
    if (std::isnan(f)) {
      EXPECT_EQ(got & 0x7c00u, 0x7c00u);
      EXPECT_NE(got & 0x03ffu, 0u);
    } else {
      ASSERT_EQ(got, want) << f;
    }
  }
}

TEST(ConvertTest, Bf16RoundTripAndRounding) {
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f)), 1.0f);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1).
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  // Just above the tie rounds up.
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20))),
            1.0f + std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
  EXPECT_EQ(Bf16ToF32(F32ToBf16(INFINITY)), INFINITY);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-INFINITY)), -INFINITY);
}

TEST(ConvertTest, BulkConversionsMatchScalar) {
  const float values[] = {0.0f, -0.0f, 1.5f, -3.25f, 1e-6f, 65504.0f, 1e5f};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    uint8_t bytes[sizeof(values)];
    float back[7];
    FromF32(dt, values, 7, bytes);
    ToF32(dt, bytes, 7, back);
    float rounded[7];
    std::memcpy(rounded, values, sizeof(values));
    RoundTo(dt, rounded, 7);
    for (int i = 0; i < 7; ++i) EXPECT_EQ(FloatBits(back[i]), FloatBits(rounded[i])) << i;
  }
}

}  // namespace
}  // namespace ringattn::kernels
