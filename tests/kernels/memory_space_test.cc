// The host memory space's operations against the host functions they stand
// for (the CPU ring's merge, add and conversion), their argument checks,
// and the emulated device space the device-resident ring is tested on.

#include "kernels/memory_space.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/convert.h"
#include "kernels/merge.h"
#include "tests/kernels/testing/fake_device.h"

namespace ringattn::kernels {
namespace {

using testing::FakeDeviceSpace;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> value(-3.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = value(rng);
  return v;
}

std::span<std::byte> Bytes(std::vector<float>& v) { return std::as_writable_bytes(std::span(v)); }

TEST(MemorySpaceTest, AllocationsAreZeroFilledAndEmptyOnesAreValid) {
  HostMemorySpace host;
  absl::StatusOr<SpaceBuffer> b = host.Allocate(1000);
  ASSERT_TRUE(b.ok()) << b.status();
  for (std::byte x : b->bytes()) ASSERT_EQ(x, std::byte{0});
  absl::StatusOr<SpaceBuffer> empty = host.Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->bytes().empty());
}

TEST(MemorySpaceTest, StridedAddTouchesOnlyTheNamedColumns) {
  HostMemorySpace host;
  // dst [3, 7], src [3, 5]: add 4 columns of each row.
  std::vector<float> dst = Random(21, 1), src = Random(15, 2);
  std::vector<float> want = dst;
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 4; ++c) want[r * 7 + c] += src[r * 5 + c];
  }
  ASSERT_TRUE(host.Add(dst, 7, src, 5, 3, 4).ok());
  EXPECT_EQ(dst, want);
  // The last row needs only its columns: 2 * 7 + 4 elements suffice.
  std::vector<float> short_dst(18, 0.0f);
  EXPECT_TRUE(host.Add(short_dst, 7, src, 5, 3, 4).ok());
  EXPECT_EQ(host.Add(std::span(short_dst).first(17), 7, src, 5, 3, 4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host.Add(dst, 3, src, 5, 3, 4).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemorySpaceTest, MergeAndConversionAreTheHostFunctionsBitForBit) {
  HostMemorySpace host;
  const int64_t rows = 9, d = 16;
  std::vector<float> out = Random(rows * d, 3), o_s = Random(rows * d, 4);
  std::vector<float> lse = Random(rows, 5), lse_s = Random(rows, 6);
  lse[2] = lse_s[4] = lse[7] = lse_s[7] = -std::numeric_limits<float>::infinity();
  std::vector<float> want_out = out, want_lse = lse;
  ASSERT_TRUE(MergePartial(want_out, want_lse, o_s, lse_s, d).ok());
  ASSERT_TRUE(host.Merge(out, lse, o_s, lse_s, d).ok());
  EXPECT_EQ(0, std::memcmp(out.data(), want_out.data(), out.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(lse.data(), want_lse.data(), lse.size() * sizeof(float)));
  EXPECT_EQ(host.Merge(out, lse, o_s, std::span(lse_s).first(3), d).code(),
            absl::StatusCode::kInvalidArgument);

  std::vector<uint16_t> bf16(out.size()), want_bf16(out.size());
  FromF32(DType::kBF16, out.data(), static_cast<int64_t>(out.size()), want_bf16.data());
  ASSERT_TRUE(host.FromF32(DType::kBF16, out, std::as_writable_bytes(std::span(bf16))).ok());
  EXPECT_EQ(bf16, want_bf16);
  EXPECT_EQ(host.FromF32(DType::kF32, out, std::as_writable_bytes(std::span(bf16))).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemorySpaceTest, CopiesCheckSizes) {
  HostMemorySpace host;
  std::vector<float> a(4), b(5);
  EXPECT_EQ(host.Copy(Bytes(a), Bytes(b)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host.Upload(Bytes(a), Bytes(b)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host.Download(Bytes(b), Bytes(a)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(host.traffic().total(), 0);
}

TEST(FakeDeviceSpaceTest, RoundTripsThroughUploadAndDownloadAndCountsBoth) {
  FakeDeviceSpace device;
  EXPECT_EQ(device.kind(), MemoryKind::kDevice);
  std::vector<float> in = Random(300, 7), out(300);
  absl::StatusOr<SpaceBuffer> b = device.Allocate(in.size() * sizeof(float));
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(device.Owns(b->bytes().data(), b->bytes().size()));
  EXPECT_FALSE(device.Owns(b->bytes().data(), b->bytes().size() + 4096));
  EXPECT_FALSE(device.Owns(in.data(), 4));
  ASSERT_TRUE(device.Upload(b->bytes(), Bytes(in)).ok());
  ASSERT_TRUE(device.Add(b->as<float>(), 300, in, 300, 1, 300).ok());
  ASSERT_TRUE(device.Download(Bytes(out), b->bytes()).ok());
  for (size_t i = 0; i < in.size(); ++i) ASSERT_EQ(out[i], in[i] + in[i]);
  EXPECT_EQ(device.traffic().host_to_device, 1200);
  EXPECT_EQ(device.traffic().device_to_host, 1200);
  EXPECT_EQ(device.bytes_held(), 1200);
  *b = SpaceBuffer();
  EXPECT_EQ(device.bytes_held(), 0);
  EXPECT_EQ(device.buffers_held(), 0);
}

TEST(FakeDeviceSpaceTest, RefusesWhatDoesNotFitAndNamesTheBytes) {
  FakeDeviceSpace device;
  device.set_capacity(1000);
  EXPECT_TRUE(device.CheckFits(1000).ok());
  const absl::Status s = device.CheckFits(1001);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("1001 bytes needed"), absl::string_view::npos) << s;
  EXPECT_EQ(device.Allocate(1001).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(device.allocations(), 0);
}

// What makes the emulation worth testing on: host code that touches device
// memory outside the space's operations crashes.
TEST(FakeDeviceSpaceDeathTest, HostReadOfDeviceMemoryFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        FakeDeviceSpace device;
        absl::StatusOr<SpaceBuffer> b = device.Allocate(64);
        if (!b.ok()) std::abort();
        volatile const float* p = b->as<float>().data();
        std::printf("%f\n", static_cast<double>(*p));
      },
      "");
  // Inside an Access scope the same read is allowed.
  FakeDeviceSpace device;
  absl::StatusOr<SpaceBuffer> b = device.Allocate(64);
  ASSERT_TRUE(b.ok());
  const FakeDeviceSpace::Access access(device);
  EXPECT_EQ(b->as<float>()[0], 0.0f);
}

}  // namespace
}  // namespace ringattn::kernels
