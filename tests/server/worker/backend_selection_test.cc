#include "server/worker/backend_selection.h"

#include "gtest/gtest.h"

namespace ringattn::worker {
namespace {

Capabilities Machine(int gpus, bool cuda_built = true, bool nccl_built = true) {
  Capabilities c;
  c.cuda_built = cuda_built;
  c.nccl_built = nccl_built;
  c.cuda_devices = gpus;
  return c;
}

Selection Select(absl::string_view device, absl::string_view transport, const Capabilities& c) {
  absl::StatusOr<DeviceFlag> d = ParseDeviceFlag(device);
  absl::StatusOr<TransportFlag> t = ParseTransportFlag(transport);
  EXPECT_TRUE(d.ok() && t.ok());
  absl::StatusOr<Selection> s = SelectBackend(*d, *t, c);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : Selection{};
}

absl::Status SelectError(absl::string_view device, absl::string_view transport,
                         const Capabilities& c) {
  return SelectBackend(*ParseDeviceFlag(device), *ParseTransportFlag(transport), c).status();
}

TEST(BackendSelectionTest, ParsesEveryFlagForm) {
  EXPECT_EQ(ParseDeviceFlag("auto")->kind, DeviceFlag::Kind::kAuto);
  EXPECT_EQ(ParseDeviceFlag("cpu")->kind, DeviceFlag::Kind::kCpu);
  EXPECT_EQ(ParseDeviceFlag("cuda")->kind, DeviceFlag::Kind::kCuda);
  EXPECT_EQ(ParseDeviceFlag("cuda")->index, 0);
  EXPECT_EQ(ParseDeviceFlag("cuda:3")->index, 3);
  for (absl::string_view bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", "cuda:1:2"}) {
    EXPECT_EQ(ParseDeviceFlag(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ParseTransportFlag("auto")->kind, TransportFlag::Kind::kAuto);
  EXPECT_EQ(ParseTransportFlag("gloo")->kind, TransportFlag::Kind::kGloo);
  EXPECT_EQ(ParseTransportFlag("shm")->kind, TransportFlag::Kind::kShm);
  EXPECT_EQ(ParseTransportFlag("nccl")->kind, TransportFlag::Kind::kNccl);
  EXPECT_FALSE(ParseTransportFlag("mpi").ok());
}

TEST(BackendSelectionTest, AutoTakesTheFirstGpuWithNccl) {
  const Selection s = Select("auto", "auto", Machine(2));
  EXPECT_EQ(s.backend, BackendKind::kCuda);
  EXPECT_EQ(s.device, 0);
  EXPECT_EQ(s.transport, TransportKind::kNccl);
  EXPECT_FALSE(s.fell_back);
  EXPECT_EQ(BackendLabel(s), "cuda:0");
  EXPECT_EQ(TransportLabel(s), "nccl");
}

TEST(BackendSelectionTest, AutoWithoutAGpuFallsBackToCpuAndSharedMemorySayingWhy) {
  Capabilities c = Machine(0);
  c.cuda_visible_devices = "7";
  const Selection s = Select("auto", "auto", c);
  EXPECT_EQ(s.backend, BackendKind::kCpu);
  EXPECT_EQ(s.transport, TransportKind::kShm);
  EXPECT_EQ(TransportLabel(s), "shm");
  EXPECT_TRUE(s.fell_back);
  EXPECT_NE(s.reason.find("no CUDA device"), std::string::npos) << s.reason;
  EXPECT_NE(s.reason.find("CUDA_VISIBLE_DEVICES=7"), std::string::npos) << s.reason;
  EXPECT_EQ(BackendLabel(s), "cpu");

  // A build without the CUDA backend says so, even with a GPU present.
  const Selection b = Select("auto", "auto", Machine(4, /*cuda_built=*/false, false));
  EXPECT_TRUE(b.fell_back);
  EXPECT_EQ(b.backend, BackendKind::kCpu);
  EXPECT_NE(b.reason.find("built without the CUDA backend"), std::string::npos) << b.reason;
}

// The device is there but its backend would not start: auto falls back,
// an explicit request fails.
TEST(BackendSelectionTest, UnusableGpuFallsBackUnderAutoOnly) {
  Capabilities c = Machine(1);
  c.cuda_unusable = "CUDA device 0 is not usable: out of memory";
  const Selection s = Select("auto", "auto", c);
  EXPECT_TRUE(s.fell_back);
  EXPECT_EQ(s.backend, BackendKind::kCpu);
  EXPECT_EQ(s.transport, TransportKind::kShm);
  EXPECT_NE(s.reason.find("out of memory"), std::string::npos) << s.reason;
  EXPECT_EQ(SelectError("cuda", "auto", c).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(BackendSelectionTest, ExplicitCudaWithoutAGpuFailsAtStart) {
  for (absl::string_view dev : {"cuda", "cuda:0"}) {
    const absl::Status s = SelectError(dev, "auto", Machine(0));
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("no CUDA device"), std::string::npos) << s;
  }
  const absl::Status out_of_range = SelectError("cuda:2", "auto", Machine(2));
  EXPECT_EQ(out_of_range.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(out_of_range.message().find("only 2"), std::string::npos) << out_of_range;
  EXPECT_EQ(SelectError("cuda", "auto", Machine(1, false, false)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BackendSelectionTest, CudaNWithEachTransport) {
  const Selection s = Select("cuda:1", "auto", Machine(2));
  EXPECT_EQ(s.device, 1);
  EXPECT_EQ(s.transport, TransportKind::kNccl);
  EXPECT_EQ(BackendLabel(s), "cuda:1");
  const Selection g = Select("cuda:1", "gloo", Machine(2));
  EXPECT_EQ(g.backend, BackendKind::kCuda);
  EXPECT_EQ(g.transport, TransportKind::kGloo);
  // CUDA compute without NCCL built: a host transport, and the log says why.
  const Selection n = Select("cuda", "auto", Machine(1, true, /*nccl_built=*/false));
  EXPECT_EQ(n.transport, TransportKind::kShm);
  EXPECT_NE(n.reason.find("without NCCL"), std::string::npos) << n.reason;
}

TEST(BackendSelectionTest, CpuTakesAHostTransportUnlessNcclIsAskedFor) {
  const Selection s = Select("cpu", "auto", Machine(8));
  EXPECT_EQ(s.backend, BackendKind::kCpu);
  EXPECT_EQ(s.transport, TransportKind::kShm);
  EXPECT_EQ(Select("cpu", "gloo", Machine(8)).transport, TransportKind::kGloo);
  EXPECT_EQ(Select("cpu", "shm", Machine(8)).transport, TransportKind::kShm);
  EXPECT_FALSE(s.fell_back);
  const Selection n = Select("cpu", "nccl", Machine(8));
  EXPECT_EQ(n.backend, BackendKind::kCpu);
  EXPECT_EQ(n.transport, TransportKind::kNccl);
  EXPECT_EQ(n.device, 0);  // The exchange runs through GPU 0.
}

TEST(BackendSelectionTest, ExplicitNcclNeedsTheBuildAndADevice) {
  const absl::Status no_gpu = SelectError("auto", "nccl", Machine(0));
  EXPECT_EQ(no_gpu.code(), absl::StatusCode::kFailedPrecondition) << no_gpu;
  EXPECT_NE(no_gpu.message().find("--transport=nccl"), std::string::npos) << no_gpu;
  const absl::Status no_build = SelectError("cpu", "nccl", Machine(2, true, false));
  EXPECT_EQ(no_build.code(), absl::StatusCode::kFailedPrecondition) << no_build;
  EXPECT_NE(no_build.message().find("without NCCL"), std::string::npos) << no_build;
}

}  // namespace
}  // namespace ringattn::worker
