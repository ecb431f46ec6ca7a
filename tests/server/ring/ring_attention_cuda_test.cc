// The ring on CUDA backends, device-resident: every rank's backend on GPU 0
// (its own stream), messages moved device to device by the fake NCCL hub
// with cudaMemcpy (NCCL itself needs one GPU per rank; the multi-GPU NCCL
// ring is in transports/nccl_transport_test.cc). Skips without a GPU.

#include <cuda_runtime_api.h>

#include <memory>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "server/ring/ring_attention.h"
#include "server/ring/transports/in_process_transport.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/ring/testing/fake_nccl.h"
#include "tests/server/ring/testing/ring_harness.h"

namespace ringattn::ring {
namespace {

using kernels::LayerConfig;
using kernels::LayerKind;

testing::BackendFn CudaBackends() {
  return [](int) -> absl::StatusOr<std::unique_ptr<kernels::ChunkBackend>> {
    auto b = kernels::cuda::CudaBackend::Create(0);
    if (!b.ok()) return b.status();
    return std::unique_ptr<kernels::ChunkBackend>(*std::move(b));
  };
}

LayerConfig Layer(int64_t window) {
  LayerConfig layer;
  layer.kind = window > 0 ? LayerKind::kSliding : LayerKind::kFull;
  layer.window = window > 0 ? window : 512;
  layer.scale = 0.125f;
  return layer;
}

TEST(RingCudaTest, DeviceResidentRingMatchesOracleWithNoHostCopiesPerStep) {
  if (kernels::cuda::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (int cp : {1, 2, 4}) {
    for (int64_t window : {int64_t{0}, int64_t{10}}) {
      for (kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
        const LayerConfig layer = Layer(window);
        const auto batch = kernels::reference::MakeSyntheticBatch(
            {2, 4, 2, 192, 64}, {testing::RingTestLayout(0), testing::RingTestLayout(1)}, dtype,
            41 + cp);
        testing::FakeNcclHub hub(cp);
        hub.CarryDeviceMemory([](std::byte* dst, const std::byte* src, size_t bytes) {
          if (cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice) != cudaSuccess) std::abort();
        });
        absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
            batch, layer, cp,
            [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> {
              return hub.Connect(rank);
            },
            CudaBackends());
        ASSERT_TRUE(got.ok()) << got.status();
        kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, true);
        for (int r = 0; r < cp; ++r) {
          for (const auto* stats : {&got->forward_stats[r], &got->backward_stats[r]}) {
            for (const StepStats& s : stats->steps) {
              EXPECT_EQ(s.host_device_bytes, 0)
                  << "cp " << cp << " rank " << r << " step " << s.step;
            }
            EXPECT_GT(stats->host_device_bytes, 0);
          }
        }
      }
    }
  }
}

// A CUDA backend on a host-memory transport stages each message, and still
// matches the oracle.
TEST(RingCudaTest, StagedRingOverHostTransportMatchesOracle) {
  if (kernels::cuda::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const LayerConfig layer = Layer(30);
  const auto batch = kernels::reference::MakeSyntheticBatch(
      {2, 4, 2, 192, 64}, {testing::RingTestLayout(0), testing::RingTestLayout(1)},
      kernels::DType::kF32, 5);
  InProcessHub hub(3);
  absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
      batch, layer, 3,
      [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> { return hub.Connect(rank); },
      CudaBackends());
  ASSERT_TRUE(got.ok()) << got.status();
  kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, true);
  int64_t staged = 0;
  for (const RingStats& s : got->forward_stats) {
    for (const StepStats& step : s.steps) staged += step.host_device_bytes;
  }
  EXPECT_GT(staged, 0);
}

}  // namespace
}  // namespace ringattn::ring
