#include "kernels/cuda/cuda_backend.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/chunk_backend.h"
#include "kernels/reference/synthetic_batch.h"
#include "tests/kernels/testing/attention_case.h"

namespace ringattn::kernels::cuda {
namespace {

// Without a GPU (or a driver) the count is 0 and Create says why; with one,
// Create succeeds exactly for the visible devices.
TEST(CudaBackendTest, CreateSucceedsExactlyForVisibleDevices) {
  const int count = CudaDeviceCount();
  ASSERT_GE(count, 0);
  absl::StatusOr<std::unique_ptr<CudaBackend>> first = CudaBackend::Create(0);
  EXPECT_EQ(first.ok(), count > 0) << first.status();
  if (!first.ok()) {
    EXPECT_EQ(first.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(first.status().message().find("CUDA device 0"), std::string::npos) << first.status();
  }
  for (int device : {-1, count}) {
    absl::StatusOr<std::unique_ptr<CudaBackend>> none = CudaBackend::Create(device);
    ASSERT_FALSE(none.ok()) << "device " << device << " of " << count;
    EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_FALSE(none.status().message().empty());
  }
}

TEST(CudaBackendTest, CountIsStableAcrossCalls) {
  // Errors of a failed probe are cleared, so asking again gives the same.
  EXPECT_EQ(CudaDeviceCount(), CudaDeviceCount());
}

std::unique_ptr<CudaBackend> MakeBackendOrNull() {
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create(0);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

TEST(CudaBackendTest, NameAndDevice) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<CudaBackend> backend = MakeBackendOrNull();
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->device(), 0);
  EXPECT_EQ(backend->name().rfind("cuda:0 (", 0), 0u) << backend->name();
  EXPECT_EQ(backend->name().back(), ')');
}

// The same arguments are rejected with the same message as by the CPU
// kernels, before any device work.
TEST(CudaBackendTest, RejectsBadArgumentsLikeTheCpuKernels) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<CudaBackend> backend = MakeBackendOrNull();
  ASSERT_NE(backend, nullptr);
  std::unique_ptr<ChunkBackend> cpu_backend = testing::MakeCpuBackend(1);
  ASSERT_NE(cpu_backend, nullptr);

  const reference::SyntheticBatch batch = reference::MakeSyntheticBatch(
      {1, 2, 1, 32, 16}, {testing::SingleDocument(32)}, DType::kF32, 3);
  const std::vector<uint8_t> q = reference::Encode(batch.q, DType::kF32);
  const std::vector<uint8_t> kv = reference::Encode(batch.k, DType::kF32);
  std::vector<float> out(batch.q.size());
  std::vector<float> lse(2 * 32);
  ForwardChunkArgs args;
  args.q = {DType::kF32, {1, 2, 32, 16}, q.data(), q.size()};
  args.k = {DType::kF32, {1, 1, 32, 16}, kv.data(), kv.size()};
  args.v = args.k;
  args.q_meta = {batch.doc, batch.vision, batch.padding, 0};
  args.kv_meta = args.q_meta;
  args.out = out;
  args.lse = lse;

  auto expect_same_rejection = [&](const ForwardChunkArgs& bad, const char* what) {
    const absl::Status want = cpu_backend->Forward(bad);
    const absl::Status got = backend->Forward(bad);
    EXPECT_EQ(want.code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_EQ(got, want) << what;
  };
  ForwardChunkArgs bad = args;
  bad.layer.dropout = 0.1f;
  expect_same_rejection(bad, "dropout");
  bad = args;
  bad.k.size_bytes -= 4;
  expect_same_rejection(bad, "short k");
  bad = args;
  bad.lse = std::span<float>(lse).first(10);
  expect_same_rejection(bad, "short lse");
  EXPECT_TRUE(backend->Forward(args).ok());
}

}  // namespace
}  // namespace ringattn::kernels::cuda
