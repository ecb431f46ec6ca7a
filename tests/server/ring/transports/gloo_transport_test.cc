// Rings of separate OS processes over Gloo TCP on 127.0.0.1: parity with the
// oracle, and a rank killed mid-ring making every other rank fail in time.
#include "server/ring/transports/gloo_transport.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/ring/testing/ring_harness.h"

extern char** environ;

namespace ringattn::ring {
namespace {

using Clock = std::chrono::steady_clock;

std::string MakeTempDir() {
  std::string pattern = ::testing::TempDir() + "ringattn_gloo_XXXXXX";
  const char* dir = mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  return pattern;
}

pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ), 0);
  return pid;
}

// Exit code of `pid`, or -1 (after killing it) if it outlives `deadline`.
int WaitUntil(pid_t pid, Clock::time_point deadline) {
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

struct ProcessRing {
  std::string dir;
  std::vector<pid_t> pids;
};

ProcessRing StartRing(int cp, int64_t batch, int64_t window, double timeout_seconds,
                      int stalled_rank = -1) {
  ProcessRing ring{MakeTempDir(), {}};
  for (int r = 0; r < cp; ++r) {
    ring.pids.push_back(
        Spawn({RINGATTN_GLOO_RANK_BINARY, "--store_dir=" + ring.dir, "--rank=" + std::to_string(r),
               "--cp=" + std::to_string(cp), "--batch=" + std::to_string(batch),
               "--window=" + std::to_string(window), "--seed=" + std::to_string(cp * 10 + batch),
               "--out_file=" + ring.dir + "/rank" + std::to_string(r) + ".bin",
               "--timeout_seconds=" + std::to_string(timeout_seconds),
               "--stall_seconds=" + std::string(r == stalled_rank ? "60" : "0")}));
  }
  return ring;
}

std::vector<float> ReadFloats(std::ifstream& in, size_t n) {
  std::vector<float> v(n);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
  return v;
}

void ExpectProcessRingMatchesOracle(int cp, int64_t batch_size, int64_t window) {
  ProcessRing ring = StartRing(cp, batch_size, window, 30.0);
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(120);
  for (int r = 0; r < cp; ++r) ASSERT_EQ(WaitUntil(ring.pids[r], deadline), 0) << "rank " << r;

  kernels::reference::BatchShape shape{batch_size, 4, 2, 192, 64};
  std::vector<kernels::reference::RowLayout> layouts;
  for (int64_t b = 0; b < batch_size; ++b) layouts.push_back(testing::RingTestLayout(b));
  const auto batch = kernels::reference::MakeSyntheticBatch(
      shape, layouts, kernels::DType::kF32, static_cast<uint64_t>(cp * 10 + batch_size));
  kernels::LayerConfig layer;
  layer.kind = window > 0 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
  layer.window = window > 0 ? window : 512;
  layer.scale = 0.125f;

  const int64_t L = 192 / cp, S = 192, D = 64;
  const int64_t bh = batch_size * 4, bk = batch_size * 2;
  kernels::reference::ChunkedResult whole;
  whole.out.assign(bh * S * D, 0.0f);
  whole.lse.assign(bh * S, 0.0f);
  whole.dq.assign(bh * S * D, 0.0f);
  whole.dk.assign(bk * S * D, 0.0f);
  whole.dv.assign(bk * S * D, 0.0f);
  for (int r = 0; r < cp; ++r) {
    std::ifstream in(ring.dir + "/rank" + std::to_string(r) + ".bin", std::ios::binary);
    ASSERT_TRUE(in) << "rank " << r << " wrote no results";
    using kernels::reference::ScatterSequence;
    ScatterSequence(ReadFloats(in, bh * L * D), bh, S, D, r * L, (r + 1) * L, whole.out);
    ScatterSequence(ReadFloats(in, bh * L), bh, S, 1, r * L, (r + 1) * L, whole.lse);
    ScatterSequence(ReadFloats(in, bh * L * D), bh, S, D, r * L, (r + 1) * L, whole.dq);
    ScatterSequence(ReadFloats(in, bk * L * D), bk, S, D, r * L, (r + 1) * L, whole.dk);
    ScatterSequence(ReadFloats(in, bk * L * D), bk, S, D, r * L, (r + 1) * L, whole.dv);
    ASSERT_TRUE(in) << "rank " << r << " results are short";
  }
  kernels::testing::ExpectResultMatchesOracle(batch, layer, whole, /*backward=*/true);
  std::filesystem::remove_all(ring.dir);
}

TEST(GlooRingTest, TwoProcessesFullLayerMatchOracle) { ExpectProcessRingMatchesOracle(2, 1, 0); }

TEST(GlooRingTest, FourProcessesSlidingLayerMatchOracle) {
  ExpectProcessRingMatchesOracle(4, 2, 60);
}

TEST(GlooRingTest, KilledRankMakesEveryOtherRankFailWithinTheTimeout) {
  const int cp = 4;
  const double timeout = 5.0;
  ProcessRing ring = StartRing(cp, 1, 0, timeout, /*stalled_rank=*/1);
  // Let every rank connect and block inside the ring on the stalled one.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  ASSERT_EQ(kill(ring.pids[1], SIGKILL), 0);
  const Clock::time_point killed = Clock::now();
  const Clock::time_point deadline = killed + std::chrono::seconds(static_cast<int>(timeout) + 5);
  for (int r : {0, 2, 3}) {
    const int code = WaitUntil(ring.pids[r], deadline);
    EXPECT_EQ(code, 3) << "rank " << r << " must fail with an error, not hang or crash";
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - killed).count(), timeout + 5);
  int status = 0;
  waitpid(ring.pids[1], &status, 0);
  std::filesystem::remove_all(ring.dir);
}

// Ranks 0 and 1 of a Gloo ring connected from two threads of this process
// (rendezvous needs both at once); a rank that fails to connect stays null.
std::vector<std::unique_ptr<Transport>> ConnectTwoRanksAsThreads(FileStore& store) {
  std::vector<std::unique_ptr<Transport>> t(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions o;
      o.rank = r;
      o.size = 2;
      o.timeout = absl::Seconds(20);
      auto c = ConnectGloo(store, o);
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) t[r] = std::move(*c);
    });
  }
  for (auto& th : threads) th.join();
  return t;
}

// Ranks as threads with the same transport: tagged messages in both
// directions, sizes checked, a silent peer times out.
TEST(GlooTransportTest, ThreadsExchangeTaggedMessagesAndTimeOut) {
  const std::string dir = MakeTempDir();
  FileStore store(dir);
  std::vector<std::unique_ptr<Transport>> t = ConnectTwoRanksAsThreads(store);
  ASSERT_TRUE(t[0] && t[1]);
  std::vector<std::byte> a(1000, std::byte{7}), b(1000), c(16, std::byte{9}), d(16);
  auto recv_late = t[1]->Recv(0, 2, d);  // Posted first, matched by tag not order.
  auto recv = t[1]->Recv(0, 1, b);
  auto send = t[0]->Send(1, 1, a);
  auto send_late = t[0]->Send(1, 2, c);
  ASSERT_TRUE(recv.ok() && send.ok() && recv_late.ok() && send_late.ok());
  EXPECT_TRUE((*send)->Wait(absl::Seconds(10)).ok());
  EXPECT_TRUE((*recv)->Wait(absl::Seconds(10)).ok());
  EXPECT_TRUE((*send_late)->Wait(absl::Seconds(10)).ok());
  EXPECT_TRUE((*recv_late)->Wait(absl::Seconds(10)).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ(c, d);
  auto silent = t[0]->Recv(1, 99, b);
  ASSERT_TRUE(silent.ok());
  const auto t0 = Clock::now();
  const absl::Status s = (*silent)->Wait(absl::Milliseconds(300));
  EXPECT_FALSE(s.ok());
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5.0);
  std::filesystem::remove_all(dir);
}

// An abort from another thread (a worker whose call was cancelled) wakes
// this rank's waits at once, and its peer's waits on it fail at once too,
// both far inside their timeouts.
TEST(GlooTransportTest, AbortFromAnotherThreadWakesWaitsHereAndOnThePeer) {
  const std::string dir = MakeTempDir();
  FileStore store(dir);
  std::vector<std::unique_ptr<Transport>> t = ConnectTwoRanksAsThreads(store);
  ASSERT_TRUE(t[0] && t[1]);
  std::vector<std::byte> here(64), there(64), big(1 << 20, std::byte{1});
  // Never matched: each waits on the other for a message never sent.
  auto waiting_here = t[1]->Recv(0, 5, here);
  auto waiting_there = t[0]->Recv(1, 6, there);
  auto sending_here = t[1]->Send(0, 7, big);  // No receive posted for it.
  ASSERT_TRUE(waiting_here.ok() && waiting_there.ok() && sending_here.ok());
  const auto t0 = Clock::now();
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    t[1]->Abort();
  });
  const absl::Status here_status = (*waiting_here)->Wait(absl::Seconds(15));
  const absl::Status send_status = (*sending_here)->Wait(absl::Seconds(15));
  const absl::Status there_status = (*waiting_there)->Wait(absl::Seconds(15));
  aborter.join();
  EXPECT_EQ(here_status.code(), absl::StatusCode::kUnavailable) << here_status;
  EXPECT_EQ(send_status.code(), absl::StatusCode::kUnavailable) << send_status;
  EXPECT_EQ(there_status.code(), absl::StatusCode::kUnavailable) << there_status;
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5.0);
  EXPECT_FALSE(t[1]->Recv(0, 8, here).ok()) << "an aborted transport takes no new operation";
  waiting_here->reset();
  sending_here->reset();
  waiting_there->reset();
  t.clear();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ringattn::ring
