// The shared-memory transport with ranks as threads of one process (each
// with its own transport, mapping the others' inboxes as separate processes
// do): messages of every size against the ring buffer, ordering and tag
// checks, bounded waits, aborts, the ring against the oracle, and nothing
// left in /dev/shm. Across processes it carries every service test's ring
// (workers on one host use it by default).

#include "server/ring/transports/shm_transport.h"

#include <dirent.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/ring/testing/ring_harness.h"
#include "tests/server/ring/testing/temp_store.h"

namespace ringattn::ring {
namespace {

using testing::TempStore;

constexpr size_t kChannel = 8192;

// Connects `size` ranks on threads; every transport or the first error.
std::vector<absl::StatusOr<std::unique_ptr<Transport>>> ConnectAll(Store& store, int size,
                                                                   uint64_t generation) {
  std::vector<absl::StatusOr<std::unique_ptr<Transport>>> out;
  for (int r = 0; r < size; ++r) out.emplace_back(absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      ShmOptions o;
      o.rank = r;
      o.size = size;
      o.generation = generation;
      o.timeout = absl::Seconds(20);
      o.channel_bytes = kChannel;
      out[r] = ConnectShm(store, o);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7) & 0xFF);
  return v;
}

// The /dev/shm names of the ring that `store` rendezvoused at `generation`
// (other tests running beside this one make rings of their own).
int ShmEntries(Store& store, uint64_t generation) {
  absl::StatusOr<std::vector<char>> nonce =
      store.Get(absl::StrCat("shm-gen-", generation, "/nonce"));
  EXPECT_TRUE(nonce.ok()) << nonce.status();
  if (!nonce.ok()) return -1;
  const std::string prefix = absl::StrCat("ringattn-", std::string(nonce->begin(), nonce->end()));
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    n += e.path().filename().string().rfind(prefix, 0) == 0 ? 1 : 0;
  }
  return n;
}

TEST(ShmTransportTest, MessagesOfEverySizeArriveWholeAndInOrder) {
  TempStore store;
  auto t = ConnectAll(store.store(), 2, 1);
  ASSERT_TRUE(t[0].ok()) << t[0].status();
  ASSERT_TRUE(t[1].ok()) << t[1].status();
  // The names are gone once every rank has mapped them.
  EXPECT_EQ(ShmEntries(store.store(), 1), 0);
  // Empty, tiny, a frame's worth, the ring's size and several times it
  // (wrapping), both ways at once.
  const std::vector<size_t> sizes = {0, 1, 16, kChannel - 16, kChannel, 5 * kChannel + 13};
  std::vector<std::thread> threads;
  std::vector<absl::Status> status(2);
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      Transport& me = **t[r];
      const int peer = 1 - r;
      std::vector<std::vector<std::byte>> out, in;
      std::vector<std::unique_ptr<PendingOp>> ops;
      for (size_t i = 0; i < sizes.size(); ++i) {
        out.push_back(Pattern(sizes[i], static_cast<int>(i) + 10 * r));
        in.emplace_back(sizes[i]);
      }
      for (size_t i = 0; i < sizes.size(); ++i) {
        auto recv = me.Recv(peer, 100 + i, in[i]);
        auto send = me.Send(peer, 100 + i, out[i]);
        if (!recv.ok() || !send.ok()) {
          status[r] = recv.ok() ? send.status() : recv.status();
          return;
        }
        ops.push_back(*std::move(recv));
        ops.push_back(*std::move(send));
      }
      for (auto& op : ops) {
        if (absl::Status s = op->Wait(absl::Seconds(20)); !s.ok()) {
          status[r] = s;
          return;
        }
      }
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (in[i] != Pattern(sizes[i], static_cast<int>(i) + 10 * peer)) {
          status[r] = absl::DataLossError(absl::StrCat("message ", i, " differs"));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_TRUE(status[0].ok()) << status[0];
  EXPECT_TRUE(status[1].ok()) << status[1];
}

TEST(ShmTransportTest, OutOfOrderPostingFailsNamingBothTags) {
  TempStore store;
  auto t = ConnectAll(store.store(), 2, 2);
  ASSERT_TRUE(t[0].ok() && t[1].ok());
  std::vector<std::byte> a(64), b(64);
  auto send = (*t[0])->Send(1, 7, a);
  auto recv = (*t[1])->Recv(0, 8, b);
  ASSERT_TRUE(send.ok() && recv.ok());
  const absl::Status s = (*recv)->Wait(absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("0x7"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("0x8"), absl::string_view::npos) << s;
  // The send completed once its bytes were in the channel; the sender learns
  // of the failure at its next wait on that rank (the receiver aborted).
  EXPECT_TRUE((*send)->Wait(absl::Seconds(10)).ok());
  auto next = (*t[0])->Recv(1, 9, a);
  ASSERT_TRUE(next.ok());
  const absl::Status n = (*next)->Wait(absl::Seconds(10));
  EXPECT_EQ(n.code(), absl::StatusCode::kUnavailable) << n;
}

TEST(ShmTransportTest, UnmatchedReceiveTimesOutAndAbortReachesThePeer) {
  TempStore store;
  auto t = ConnectAll(store.store(), 2, 3);
  ASSERT_TRUE(t[0].ok() && t[1].ok());
  std::vector<std::byte> b(64);
  auto recv = (*t[1])->Recv(0, 1, b);
  ASSERT_TRUE(recv.ok());
  const absl::Time start = absl::Now();
  EXPECT_EQ((*recv)->Wait(absl::Milliseconds(200)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // A receive waiting on a rank that aborts fails well within its timeout.
  std::vector<std::byte> c(64);
  auto again = (*t[0])->Recv(1, 2, c);
  ASSERT_TRUE(again.ok());
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    (*t[1])->Abort();
  });
  const absl::Time t0 = absl::Now();
  const absl::Status s = (*again)->Wait(absl::Seconds(30));
  aborter.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  // And every later call on the aborted side fails.
  EXPECT_FALSE((*t[1])->Send(0, 3, c).ok());
}

TEST(ShmTransportTest, RingMatchesOracle) {
  for (int cp : {2, 4}) {
    for (batch::LayoutKind layout : {batch::LayoutKind::kContiguous, batch::LayoutKind::kZigzag}) {
      kernels::LayerConfig layer;
      layer.kind = kernels::LayerKind::kSliding;
      layer.window = 30;
      layer.scale = 0.125f;
      const auto batch = kernels::reference::MakeSyntheticBatch(
          {2, 4, 2, 192, 64}, {testing::RingTestLayout(0), testing::RingTestLayout(1)},
          kernels::DType::kF32, 17 + cp);
      TempStore store;
      absl::StatusOr<testing::RingRunResult> got = testing::RunRing(
          batch, layer, cp,
          [&](int rank) -> absl::StatusOr<std::unique_ptr<Transport>> {
            ShmOptions o;
            o.rank = rank;
            o.size = cp;
            o.generation = 4;
            o.timeout = absl::Seconds(20);
            o.channel_bytes = kChannel;  // Far below a chunk: every message wraps.
            return ConnectShm(store.store(), o);
          },
          1, layout);
      ASSERT_TRUE(got.ok()) << got.status();
      kernels::testing::ExpectResultMatchesOracle(batch, layer, got->whole, true);
    }
  }
}

TEST(ShmTransportTest, RejectsBadRanksAndTinyChannels) {
  TempStore store;
  ShmOptions o;
  o.rank = 2;
  o.size = 2;
  EXPECT_EQ(ConnectShm(store.store(), o).status().code(), absl::StatusCode::kInvalidArgument);
  o.rank = 0;
  o.channel_bytes = 100;
  EXPECT_EQ(ConnectShm(store.store(), o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ringattn::ring
