#include "server/ring/transports/nccl_op_batcher.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/ring/testing/fake_nccl.h"
#include "tests/server/ring/testing/ring_harness.h"

namespace ringattn::ring {
namespace {

using testing::FakeNcclHub;

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::byte> Filled(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 7 + seed) & 0xFF);
  return v;
}

// A launcher that records what it was given and finishes at once.
struct RecordingLauncher {
  std::vector<std::vector<P2pOp>> groups;
  int aborts = 0;

  class Done : public LaunchedGroup {
   public:
    explicit Done(std::vector<P2pOp> ops) : ops_(std::move(ops)) {}
    absl::StatusOr<bool> Poll() override { return true; }
    uint64_t ReceivedTag(size_t index) const override { return ops_[index].tag; }

   private:
    std::vector<P2pOp> ops_;
  };

  OpBatcherHooks Hooks() {
    OpBatcherHooks h;
    h.launch =
        [this](std::span<const P2pOp> ops) -> absl::StatusOr<std::unique_ptr<LaunchedGroup>> {
      groups.emplace_back(ops.begin(), ops.end());
      return std::make_unique<Done>(groups.back());
    };
    h.abort = [this] { ++aborts; };
    return h;
  }
};

TEST(NcclOpBatcherTest, OpsWaitInTheQueueUntilFlushOrTheFirstWait) {
  RecordingLauncher launcher;
  OpBatcher batcher(launcher.Hooks());
  std::vector<std::byte> a(8), b(8);
  auto r = batcher.Post({P2pOp::Kind::kRecv, 1, 10, a.data(), a.size()});
  auto s = batcher.Post({P2pOp::Kind::kSend, 2, 11, b.data(), b.size()});
  ASSERT_TRUE(r.ok() && s.ok());
  EXPECT_EQ(batcher.queued(), 2u);
  EXPECT_EQ(batcher.groups_launched(), 0u);
  // Waiting on the send issues both, as one group, in posting order.
  ASSERT_TRUE((*s)->Wait(absl::Seconds(1)).ok());
  ASSERT_EQ(launcher.groups.size(), 1u);
  ASSERT_EQ(launcher.groups[0].size(), 2u);
  EXPECT_EQ(launcher.groups[0][0].kind, P2pOp::Kind::kRecv);
  EXPECT_EQ(launcher.groups[0][0].tag, 10u);
  EXPECT_EQ(launcher.groups[0][1].peer, 2);
  EXPECT_EQ(batcher.queued(), 0u);
  ASSERT_TRUE((*r)->Wait(absl::Seconds(1)).ok());
  EXPECT_EQ(launcher.groups.size(), 1u);  // Already issued with the send.

  auto t = batcher.Post({P2pOp::Kind::kSend, 1, 12, b.data(), b.size()});
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(batcher.Flush().ok());
  EXPECT_EQ(batcher.groups_launched(), 2u);
  ASSERT_TRUE(batcher.Flush().ok());  // Nothing queued: no empty group.
  EXPECT_EQ(batcher.groups_launched(), 2u);
  ASSERT_TRUE((*t)->Wait(absl::Seconds(1)).ok());
  EXPECT_EQ(launcher.aborts, 0);
}

// Each rank of a ring receives from its predecessor and sends to its
// successor. Issued as one group per rank, every exchange completes; issued
// as a lone receive and then a lone send, every rank waits forever on a
// send stuck behind its peer's receive, and the bounded wait turns that into
// DEADLINE_EXCEEDED (or UNAVAILABLE once a peer gave up and aborted).
void RunRingExchange(bool grouped, absl::Duration timeout, std::vector<absl::Status>& status,
                     std::vector<std::vector<std::byte>>& received, FakeNcclHub& hub) {
  const int cp = static_cast<int>(status.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < cp; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Transport> t = hub.Connect(r);
      const std::vector<std::byte> mine = Filled(4096, r);
      received[r].assign(4096, std::byte{0});
      auto recv = t->Recv((r + cp - 1) % cp, 7, received[r]);
      if (!grouped && recv.ok()) (void)t->Flush();
      auto send = t->Send((r + 1) % cp, 7, mine);
      if (!recv.ok() || !send.ok()) {
        status[r] = recv.ok() ? send.status() : recv.status();
        return;
      }
      if (absl::Status s = t->Flush(); !s.ok()) {
        status[r] = s;
        return;
      }
      status[r] = (*recv)->Wait(timeout);
      if (status[r].ok()) status[r] = (*send)->Wait(timeout);
    });
  }
  for (auto& th : threads) th.join();
}

TEST(NcclOpBatcherTest, RingExchangeCompletesAsOneGroupAndDeadlocksAsLoneOps) {
  const int cp = 4;
  {
    FakeNcclHub hub(cp);
    std::vector<absl::Status> status(cp);
    std::vector<std::vector<std::byte>> received(cp);
    RunRingExchange(/*grouped=*/true, absl::Seconds(10), status, received, hub);
    for (int r = 0; r < cp; ++r) {
      ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
      EXPECT_EQ(received[r], Filled(4096, (r + cp - 1) % cp)) << "rank " << r;
      EXPECT_EQ(hub.aborts(r), 0);
    }
  }
  {
    FakeNcclHub hub(cp);
    std::vector<absl::Status> status(cp);
    std::vector<std::vector<std::byte>> received(cp);
    const auto t0 = std::chrono::steady_clock::now();
    RunRingExchange(/*grouped=*/false, absl::Milliseconds(300), status, received, hub);
    EXPECT_LT(SecondsSince(t0), 5.0);
    bool any_deadline = false;
    for (int r = 0; r < cp; ++r) {
      EXPECT_TRUE(absl::IsDeadlineExceeded(status[r]) || absl::IsUnavailable(status[r]))
          << "rank " << r << ": " << status[r];
      any_deadline |= absl::IsDeadlineExceeded(status[r]);
      EXPECT_NE(status[r].message().find("rank"), absl::string_view::npos) << status[r];
      EXPECT_EQ(hub.aborts(r), 1) << "rank " << r;
    }
    EXPECT_TRUE(any_deadline);
  }
}

// NCCL pairs by order: tags do not pick messages, they only check them.
TEST(NcclOpBatcherTest, OrderNotTagPairsMessagesAndAMismatchIsAnError) {
  FakeNcclHub hub(2);
  auto t0 = hub.Connect(0);
  auto t1 = hub.Connect(1);
  const std::vector<std::byte> x = Filled(64, 1), y = Filled(64, 2);
  std::vector<std::byte> got_x(64), got_y(64);
  // Same order on both sides: each message lands where its tag says.
  auto sx = t0->Send(1, 100, x);
  auto sy = t0->Send(1, 200, y);
  auto rx = t1->Recv(0, 100, got_x);
  auto ry = t1->Recv(0, 200, got_y);
  ASSERT_TRUE(t0->Flush().ok());
  ASSERT_TRUE(t1->Flush().ok());
  for (auto* op : {&sx, &sy, &rx, &ry}) ASSERT_TRUE((**op)->Wait(absl::Seconds(5)).ok());
  EXPECT_EQ(got_x, x);
  EXPECT_EQ(got_y, y);

  // Rank 1 posts its receives the other way round: the first receive gets
  // the first message whatever its tag, and the tag check says so.
  auto sa = t0->Send(1, 300, x);
  auto sb = t0->Send(1, 400, y);
  auto rb = t1->Recv(0, 400, got_y);
  auto ra = t1->Recv(0, 300, got_x);
  ASSERT_TRUE(t0->Flush().ok());
  ASSERT_TRUE(t1->Flush().ok());
  EXPECT_TRUE((*sa)->Wait(absl::Seconds(5)).ok());
  EXPECT_TRUE((*sb)->Wait(absl::Seconds(5)).ok());
  const absl::Status s = (*rb)->Wait(absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("0x190"), absl::string_view::npos) << s;  // Posted with 400.
  EXPECT_NE(s.message().find("0x12c"), absl::string_view::npos) << s;  // 300 arrived.
  EXPECT_NE(s.message().find("different orders"), absl::string_view::npos) << s;
  EXPECT_EQ(hub.aborts(1), 1);
  EXPECT_FALSE((*ra)->Wait(absl::Seconds(5)).ok());
  // Aborted: every later call fails at once.
  EXPECT_TRUE(absl::IsUnavailable(t1->Send(0, 1, x).status()));
}

TEST(NcclOpBatcherTest, TimeoutNamesThePeerAbortsOnceAndLaterCallsFail) {
  FakeNcclHub hub(2);
  auto t0 = hub.Connect(0);
  auto t1 = hub.Connect(1);  // Never sends.
  std::vector<std::byte> buf(16);
  auto r = t0->Recv(1, 5, buf);
  ASSERT_TRUE(r.ok());
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = (*r)->Wait(absl::Milliseconds(200));
  const double took = SecondsSince(start);
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_GE(took, 0.19);
  EXPECT_LT(took, 2.0);
  EXPECT_NE(s.message().find("receive from rank 1"), absl::string_view::npos) << s;
  EXPECT_EQ(hub.aborts(0), 1);
  EXPECT_EQ((*r)->Wait(absl::Seconds(1)).code(), s.code());  // A second Wait repeats the result.
  EXPECT_TRUE(absl::IsUnavailable(t0->Send(1, 6, buf).status()));
  EXPECT_TRUE(absl::IsUnavailable(t0->Flush()));
  t0->Abort();
  EXPECT_EQ(hub.aborts(0), 1);  // Abort is called on the communicator once.
}

TEST(NcclOpBatcherTest, AbortFromAnotherThreadEndsAWaitAtOnce) {
  FakeNcclHub hub(2);
  auto t0 = hub.Connect(0);
  std::vector<std::byte> buf(16);
  auto r = t0->Recv(1, 5, buf);
  ASSERT_TRUE(r.ok());
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    t0->Abort();
  });
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = (*r)->Wait(absl::Seconds(30));
  aborter.join();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_LT(SecondsSince(start), 5.0);
  EXPECT_EQ(hub.aborts(0), 1);
}

TEST(NcclOpBatcherTest, DeadPeerFailsTheWaitWithUnavailableAndAborts) {
  FakeNcclHub hub(2);
  auto t0 = hub.Connect(0);
  std::vector<std::byte> buf(16);
  auto r = t0->Recv(1, 5, buf);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(t0->Flush().ok());
  hub.Kill(1);
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = (*r)->Wait(absl::Seconds(30));
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_LT(SecondsSince(start), 5.0);
  EXPECT_NE(s.message().find("rank 1"), absl::string_view::npos) << s;
  EXPECT_EQ(hub.aborts(0), 1);
}

TEST(NcclOpBatcherTest, LaunchErrorAbortsAndIsReturned) {
  int aborts = 0;
  OpBatcherHooks h;
  h.launch = [](std::span<const P2pOp>) -> absl::StatusOr<std::unique_ptr<LaunchedGroup>> {
    return absl::InternalError("ncclGroupEnd failed");
  };
  h.abort = [&] { ++aborts; };
  OpBatcher batcher(std::move(h));
  std::vector<std::byte> buf(4);
  auto op = batcher.Post({P2pOp::Kind::kSend, 0, 1, buf.data(), buf.size()});
  ASSERT_TRUE(op.ok());
  const absl::Status s = batcher.Flush();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("ncclGroupEnd failed"), absl::string_view::npos) << s;
  EXPECT_EQ(aborts, 1);
  EXPECT_TRUE(absl::IsUnavailable((*op)->Wait(absl::Seconds(1))));
}

// A PendingOp kept past its transport fails instead of touching freed state.
TEST(NcclOpBatcherTest, OpOutlivingItsTransportFailsUnavailable) {
  FakeNcclHub hub(1);
  std::vector<std::byte> buf(4);
  std::unique_ptr<PendingOp> queued, issued;
  {
    auto t = hub.Connect(0);
    auto a = t->Recv(0, 1, buf);  // Matched by nobody: stays in flight.
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE(t->Flush().ok());
    auto b = t->Send(0, 2, buf);  // Never issued.
    ASSERT_TRUE(b.ok());
    issued = *std::move(a);
    queued = *std::move(b);
  }
  EXPECT_EQ(hub.aborts(0), 1);  // Closed with an operation in flight.
  EXPECT_TRUE(absl::IsUnavailable(issued->Wait(absl::Seconds(1))));
  EXPECT_TRUE(absl::IsUnavailable(queued->Wait(absl::Seconds(1))));
}

// A size-1 communicator sends to itself: both halves in one group.
TEST(NcclOpBatcherTest, SelfExchangeInOneGroup) {
  FakeNcclHub hub(1);
  auto t = hub.Connect(0);
  const std::vector<std::byte> x = Filled(1000, 3);
  std::vector<std::byte> got(1000);
  auto s = t->Send(0, 9, x);
  auto r = t->Recv(0, 9, got);
  ASSERT_TRUE(s.ok() && r.ok());
  ASSERT_TRUE((*r)->Wait(absl::Seconds(5)).ok());
  ASSERT_TRUE((*s)->Wait(absl::Seconds(5)).ok());
  EXPECT_EQ(got, x);
}

// The whole ring, forward and backward, over NCCL's pairing rules: the
// order in which the ring posts is the same on every rank, so pairing by
// order gives the oracle's results, and the groups it flushes never
// deadlock.
class NcclOpBatcherRingTest : public ::testing::TestWithParam<int> {};

TEST_P(NcclOpBatcherRingTest, RingOverFakeNcclMatchesOracle) {
  const int cp = GetParam();
  for (int64_t window : {int64_t{0}, int64_t{30}}) {
    kernels::LayerConfig layer;
    layer.kind = window > 0 ? kernels::LayerKind::kSliding : kernels::LayerKind::kFull;
    layer.window = window > 0 ? window : 512;
    layer.scale = 0.125f;
    const auto batch = kernels::reference::MakeSyntheticBatch(
        {2, 4, 2, 192, 32}, {testing::RingTestLayout(0), testing::RingTestLayout(1)},
        kernels::DType::kF32, 21 + cp);
    FakeNcclHub hub(cp);
    absl::StatusOr<testing::RingRunResult> got = testing::RunRing(
        batch, layer, cp, [&hub](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> {
          return hub.Connect(rank);
        });
    ASSERT_TRUE(got.ok()) << got.status();
    kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, /*backward=*/true);
    for (int r = 0; r < cp; ++r) EXPECT_EQ(hub.aborts(r), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cp, NcclOpBatcherRingTest, ::testing::Values(1, 2, 3, 4, 8),
                         [](const auto& info) { return "Cp" + std::to_string(info.param); });

}  // namespace
}  // namespace ringattn::ring
