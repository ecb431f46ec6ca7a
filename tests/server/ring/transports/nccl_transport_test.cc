// The NCCL transport on real GPUs: a size-1 communicator sending to itself
// (host and device buffers, grouped exchanges), bounded timeouts, abort;
// with two GPUs or more, ranks as threads, one per GPU, running the ring
// against the oracle. Skips without a CUDA device; the queueing, grouping
// and failure logic underneath is tested on the CPU in
// nccl_op_batcher_test.cc.
#include "server/ring/transports/nccl_transport.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "server/ring/transports/nccl_check.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/ring/testing/ring_harness.h"
#include "tests/server/ring/testing/temp_store.h"

namespace ringattn::ring {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

#define RINGATTN_SKIP_WITHOUT_GPUS(n)                                                      \
  do {                                                                                     \
    if (NcclDeviceCount() < (n)) GTEST_SKIP() << "no CUDA device" << ((n) > 1 ? "s" : ""); \
  } while (false)

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 17) & 0xFF);
  return v;
}

using testing::TempStore;

absl::StatusOr<std::unique_ptr<Transport>> ConnectAlone(Store& store, uint64_t generation) {
  NcclOptions o;
  o.rank = 0;
  o.size = 1;
  o.device = 0;
  o.generation = generation;
  o.timeout = absl::Seconds(30);
  return ConnectNccl(store, o);
}

// A device buffer of `n` bytes, freed at scope exit.
struct DeviceBytes {
  explicit DeviceBytes(size_t n) : size(n) {
    void* p = nullptr;
    EXPECT_TRUE(RINGATTN_CUDA_STATUS(cudaMalloc(&p, n)).ok());
    data = static_cast<std::byte*>(p);
  }
  ~DeviceBytes() { nccl_check::Report(RINGATTN_CUDA_STATUS(cudaFree(data))); }
  std::span<std::byte> span() { return {data, size}; }
  size_t size;
  std::byte* data = nullptr;
};

TEST(NcclTransportTest, WithoutADeviceConnectFailsPrecondition) {
  if (NcclDeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  TempStore store;
  const absl::StatusOr<std::unique_ptr<Transport>> t = ConnectAlone(store.store(), 1);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
}

TEST(NcclTransportTest, SelfSendRecvHostBuffers) {
  RINGATTN_SKIP_WITHOUT_GPUS(1);
  TempStore store;
  auto t = ConnectAlone(store.store(), 1);
  ASSERT_TRUE(t.ok()) << t.status();
  for (size_t n : {size_t{1}, size_t{4096}, size_t{48} << 20}) {
    const std::vector<std::byte> x = Pattern(n, 1);
    std::vector<std::byte> got(n);
    auto r = (*t)->Recv(0, 5, got);
    auto s = (*t)->Send(0, 5, x);
    ASSERT_TRUE(r.ok() && s.ok());
    ASSERT_TRUE((*t)->Flush().ok());
    ASSERT_TRUE((*r)->Wait(absl::Seconds(30)).ok()) << n;
    ASSERT_TRUE((*s)->Wait(absl::Seconds(30)).ok()) << n;
    EXPECT_EQ(got, x) << n << " bytes";
  }
}

TEST(NcclTransportTest, SelfSendRecvDeviceBuffers) {
  RINGATTN_SKIP_WITHOUT_GPUS(1);
  TempStore store;
  auto t = ConnectAlone(store.store(), 2);
  ASSERT_TRUE(t.ok()) << t.status();
  const size_t n = size_t{8} << 20;
  const std::vector<std::byte> x = Pattern(n, 2);
  DeviceBytes src(n), dst(n);
  ASSERT_TRUE(RINGATTN_CUDA_STATUS(cudaMemcpy(src.data, x.data(), n, cudaMemcpyHostToDevice)).ok());
  ASSERT_TRUE(RINGATTN_CUDA_STATUS(cudaMemset(dst.data, 0, n)).ok());
  // Device to device in place; then device to host and host to device mixed.
  auto r = (*t)->Recv(0, 1, dst.span());
  auto s = (*t)->Send(0, 1, src.span());
  ASSERT_TRUE(r.ok() && s.ok());
  ASSERT_TRUE((*r)->Wait(absl::Seconds(30)).ok());  // The first Wait issues the group.
  ASSERT_TRUE((*s)->Wait(absl::Seconds(30)).ok());
  std::vector<std::byte> got(n);
  ASSERT_TRUE(
      RINGATTN_CUDA_STATUS(cudaMemcpy(got.data(), dst.data, n, cudaMemcpyDeviceToHost)).ok());
  EXPECT_EQ(got, x);

  std::vector<std::byte> host_dst(n);
  const std::vector<std::byte> y = Pattern(n, 3);
  auto r1 = (*t)->Recv(0, 2, host_dst);
  auto s1 = (*t)->Send(0, 2, src.span());
  auto r2 = (*t)->Recv(0, 3, dst.span());
  auto s2 = (*t)->Send(0, 3, y);
  ASSERT_TRUE(r1.ok() && s1.ok() && r2.ok() && s2.ok());
  ASSERT_TRUE((*t)->Flush().ok());
  for (auto* op : {&r1, &s1, &r2, &s2}) ASSERT_TRUE((**op)->Wait(absl::Seconds(30)).ok());
  EXPECT_EQ(host_dst, x);
  ASSERT_TRUE(
      RINGATTN_CUDA_STATUS(cudaMemcpy(got.data(), dst.data, n, cudaMemcpyDeviceToHost)).ok());
  EXPECT_EQ(got, y);
}

// Several messages of different sizes in one group, posted receives first
// (a lone receive ahead of its send would never complete); repeated, so the
// staging buffers are reused.
TEST(NcclTransportTest, GroupedExchangeOfSeveralMessages) {
  RINGATTN_SKIP_WITHOUT_GPUS(1);
  TempStore store;
  auto t = ConnectAlone(store.store(), 3);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<size_t> sizes = {16, 1 << 20, 3 << 20, 7};
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<std::byte>> in, out;
    std::vector<std::unique_ptr<PendingOp>> ops;
    for (size_t i = 0; i < sizes.size(); ++i) {
      in.push_back(Pattern(sizes[i], round * 10 + static_cast<int>(i)));
      out.emplace_back(sizes[i]);
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto r = (*t)->Recv(0, 100 + i, out[i]);
      ASSERT_TRUE(r.ok());
      ops.push_back(*std::move(r));
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto s = (*t)->Send(0, 100 + i, in[i]);
      ASSERT_TRUE(s.ok());
      ops.push_back(*std::move(s));
    }
    ASSERT_TRUE((*t)->Flush().ok());
    for (auto& op : ops) ASSERT_TRUE(op->Wait(absl::Seconds(30)).ok());
    for (size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(out[i], in[i]) << "round " << round;
  }
}

// A ring of two where rank 1 never comes: creation gives up in bounded time.
TEST(NcclTransportTest, MissingRankMakesConnectTimeOut) {
  RINGATTN_SKIP_WITHOUT_GPUS(1);
  TempStore store;
  NcclOptions o;
  o.rank = 0;
  o.size = 2;
  o.generation = 4;
  o.timeout = absl::Seconds(3);
  const auto t0 = Clock::now();
  const absl::StatusOr<std::unique_ptr<Transport>> t = ConnectNccl(store.store(), o);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDeadlineExceeded) << t.status();
  EXPECT_LT(SecondsSince(t0), 3.0 + 10.0);
  // Rank 1 alone waits for the id in the store, also bounded.
  o.rank = 1;
  o.generation = 5;
  o.timeout = absl::Seconds(1);
  const absl::StatusOr<std::unique_ptr<Transport>> u = ConnectNccl(store.store(), o);
  EXPECT_EQ(u.status().code(), absl::StatusCode::kDeadlineExceeded) << u.status();
}

// A receive with no send to match it (NCCL refuses a lone self receive, or
// it never completes): either way the wait ends in bounded time, and with
// an error, not a hang.
TEST(NcclTransportTest, UnmatchedReceiveFailsInBoundedTime) {
  RINGATTN_SKIP_WITHOUT_GPUS(1);
  TempStore store;
  auto t = ConnectAlone(store.store(), 9);
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::byte> buf(4096);
  auto r = (*t)->Recv(0, 1, buf);
  ASSERT_TRUE(r.ok());
  const auto t0 = Clock::now();
  const absl::Status s = (*r)->Wait(absl::Seconds(1));
  EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s)) << s;
  EXPECT_LT(SecondsSince(t0), 1.0 + 10.0);
  EXPECT_TRUE(absl::IsUnavailable((*t)->Send(0, 1, buf).status()));  // Aborted.
}

TEST(NcclTransportTest, AbortFailsEveryLaterCall) {
  RINGATTN_SKIP_WITHOUT_GPUS(1);
  TempStore store;
  auto t = ConnectAlone(store.store(), 6);
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::byte> buf(64);
  auto queued = (*t)->Recv(0, 1, buf);
  ASSERT_TRUE(queued.ok());
  (*t)->Abort();
  EXPECT_TRUE(absl::IsUnavailable((*queued)->Wait(absl::Seconds(5))));
  EXPECT_TRUE(absl::IsUnavailable((*t)->Send(0, 2, buf).status()));
  EXPECT_TRUE(absl::IsUnavailable((*t)->Flush()));
  // A new generation is a new communicator: unaffected.
  auto fresh = ConnectAlone(store.store(), 7);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  const std::vector<std::byte> x = Pattern(64, 4);
  auto r = (*fresh)->Recv(0, 1, buf);
  auto s = (*fresh)->Send(0, 1, x);
  ASSERT_TRUE(r.ok() && s.ok());
  EXPECT_TRUE((*r)->Wait(absl::Seconds(30)).ok());
  EXPECT_TRUE((*s)->Wait(absl::Seconds(30)).ok());
  EXPECT_EQ(buf, x);
}

// Connects ranks 0..n-1, one thread and one GPU each.
std::vector<std::unique_ptr<Transport>> ConnectThreads(Store& store, int n, uint64_t generation) {
  std::vector<std::unique_ptr<Transport>> t(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      NcclOptions o;
      o.rank = r;
      o.size = n;
      o.device = r;
      o.generation = generation;
      o.timeout = absl::Seconds(60);
      auto c = ConnectNccl(store, o);
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) t[r] = *std::move(c);
    });
  }
  for (auto& th : threads) th.join();
  return t;
}

// Rank 1 posts nothing: rank 0's receive times out in bounded time, names
// rank 1, and its abort makes rank 1's next wait fail too.
TEST(NcclTransportTest, TwoGpusSilentPeerTimesOutAndAbortReachesIt) {
  RINGATTN_SKIP_WITHOUT_GPUS(2);
  TempStore store;
  auto t = ConnectThreads(store.store(), 2, 8);
  ASSERT_TRUE(t[0] && t[1]);
  std::vector<std::byte> buf(1 << 20);
  auto r = t[0]->Recv(1, 1, buf);
  ASSERT_TRUE(r.ok());
  const auto t0 = Clock::now();
  const absl::Status s = (*r)->Wait(absl::Milliseconds(500));
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_NE(s.message().find("rank 1"), absl::string_view::npos) << s;
  EXPECT_TRUE(absl::IsUnavailable(t[0]->Send(1, 2, buf).status()));
  // Rank 1 now sends to the aborted rank 0: it must not hang past its bound.
  const std::vector<std::byte> x = Pattern(buf.size(), 5);
  auto late = t[1]->Send(0, 1, x);
  ASSERT_TRUE(late.ok());
  const auto t1 = Clock::now();
  EXPECT_FALSE((*late)->Wait(absl::Seconds(3)).ok());
  EXPECT_LT(SecondsSince(t1), 3.0 + 5.0);
}

// The ring over NCCL, ranks as threads on one GPU each, against the oracle.
TEST(NcclTransportTest, MultiGpuRingMatchesOracle) {
  RINGATTN_SKIP_WITHOUT_GPUS(2);
  const int cp = std::min(4, NcclDeviceCount());
  for (int64_t window : {int64_t{0}, int64_t{30}}) {
    kernels::LayerConfig layer;
    layer.kind = window > 0 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
    layer.window = window > 0 ? window : 512;
    layer.scale = 0.125f;
    const auto batch = kernels::reference::MakeSyntheticBatch(
        {2, 4, 2, 192, 64}, {testing::RingTestLayout(0), testing::RingTestLayout(1)},
        kernels::DType::kF32, 31);
    TempStore store;
    // Each rank's CUDA backend on its own GPU: K/V chunks and gradient
    // accumulators go GPU to GPU over NCCL, with no host copy per step.
    absl::StatusOr<testing::RingRunResult> got = testing::RunRingOn(
        batch, layer, cp,
        [&](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> {
          NcclOptions o;
          o.rank = rank;
          o.size = cp;
          o.device = rank;
          o.generation = static_cast<uint64_t>(10 + window);
          o.timeout = absl::Seconds(60);
          return ConnectNccl(store.store(), o);
        },
        [](int rank) -> absl::StatusOr<std::unique_ptr<kernels::ChunkBackend>> {
          auto b = kernels::cuda::CudaBackend::Create(rank);
          if (!b.ok()) return b.status();
          return std::unique_ptr<kernels::ChunkBackend>(*std::move(b));
        });
    ASSERT_TRUE(got.ok()) << got.status();
    kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, /*backward=*/true);
    for (const RingStats& s : got->forward_stats) {
      for (const StepStats& step : s.steps) EXPECT_EQ(step.host_device_bytes, 0);
    }
    for (const RingStats& s : got->backward_stats) {
      for (const StepStats& step : s.steps) EXPECT_EQ(step.host_device_bytes, 0);
    }
  }
}

}  // namespace
}  // namespace ringattn::ring
