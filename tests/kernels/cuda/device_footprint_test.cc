#include "kernels/cuda/device_footprint.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/launch_plan.h"

namespace ringattn::kernels::cuda {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

AttentionShape Shape(DType dtype) {
  AttentionShape s;
  s.dtype = dtype;
  s.batch = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.q_len = 256;
  s.kv_len = 512;
  s.head_dim = 128;
  return s;
}

TEST(DeviceFootprintTest, ForwardCountsEveryStagingBufferByHand) {
  const AttentionShape s = Shape(DType::kBF16);
  absl::StatusOr<LaunchPlan> plan = MakeLaunchPlan(s, kSm90Caps);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const StepFootprint f = StepDeviceFootprint(s, *plan, /*backward=*/false);
  const int64_t q_elems = 2 * 4 * 256 * 128, kv_elems = 2 * 2 * 512 * 128;
  EXPECT_EQ(f.q, q_elems * 2);
  EXPECT_EQ(f.k, kv_elems * 2);
  EXPECT_EQ(f.v, kv_elems * 2);
  EXPECT_EQ(f.q_meta, 2 * 256 * 9);  // doc + vision int32, padding uint8
  EXPECT_EQ(f.kv_meta, 2 * 512 * 9);
  EXPECT_EQ(f.out, q_elems * 4);  // The fp32 partial
  EXPECT_EQ(f.lse, 2 * 4 * 256 * 4);
  EXPECT_EQ(f.dout + f.dq + f.dk + f.dv, 0);
  EXPECT_EQ(f.workspace, plan->forward_workspace_bytes);
  EXPECT_GT(f.workspace, 0);
  EXPECT_EQ(f.total(), f.q + f.k + f.v + f.q_meta + f.kv_meta + f.out + f.lse + f.workspace);
}

TEST(DeviceFootprintTest, BackwardAddsGradientsAndTheLargerWorkspace) {
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    const AttentionShape s = Shape(dtype);
    absl::StatusOr<LaunchPlan> plan = MakeLaunchPlan(s, kSm90Caps);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const StepFootprint fwd = StepDeviceFootprint(s, *plan, false);
    const StepFootprint bwd = StepDeviceFootprint(s, *plan, true);
    const int64_t q_elems = 2 * 4 * 256 * 128, kv_elems = 2 * 2 * 512 * 128;
    const int64_t elem = static_cast<int64_t>(DTypeSize(dtype));
    EXPECT_EQ(bwd.dout, q_elems * elem);
    EXPECT_EQ(bwd.dq, q_elems * 4);
    EXPECT_EQ(bwd.dk, kv_elems * 4);
    EXPECT_EQ(bwd.dv, kv_elems * 4);
    // One buffer serves the forward's fp32 partial and the backward's output.
    EXPECT_EQ(bwd.out, q_elems * 4);
    EXPECT_EQ(bwd.workspace,
              std::max(plan->forward_workspace_bytes, plan->backward_workspace_bytes));
    EXPECT_EQ(bwd.total() - fwd.total(),
              bwd.dout + bwd.dq + bwd.dk + bwd.dv + (bwd.workspace - fwd.workspace));
  }
}

TEST(DeviceFootprintTest, AdmissionNamesNeededFreeAndTotal) {
  EXPECT_TRUE(CheckDeviceFits(100, 100, 1000, "cuda:0").ok());
  EXPECT_TRUE(CheckDeviceFits(0, 0, 1000, "cuda:0").ok());
  const absl::Status s = CheckDeviceFits(101, 100, 1000, "cuda:1 (H100)");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("needs 101 more bytes"), HasSubstr("cuda:1 (H100)"),
                                 HasSubstr("100 of 1000 bytes are free")));
}

}  // namespace
}  // namespace ringattn::kernels::cuda
