#include "server/worker/call_sequencer.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::server {
namespace {

// Calls arriving in any order run in sequence order, one at a time.
TEST(CallSequencerTest, RunsCallsInSequenceOrderWhateverTheArrivalOrder) {
  CallSequencer sequencer;
  std::vector<int> order;
  std::mutex mu;
  std::atomic<int> running{0};
  std::atomic<bool> overlap{false};
  std::vector<std::thread> calls;
  for (int seq : {5, 3, 1, 4, 2, 6}) {
    calls.emplace_back([&, seq] {
      ASSERT_TRUE(sequencer.WaitTurn(seq, absl::Seconds(10)).ok());
      if (running.fetch_add(1) != 0) overlap = true;
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(seq);
      }
      running.fetch_sub(1);
      sequencer.Done(seq);
    });
  }
  for (auto& t : calls) t.join();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(overlap);
}

TEST(CallSequencerTest, MissingEarlierCallTimesOutAndPastCallsAreRefused) {
  CallSequencer sequencer;
  const absl::Status late = sequencer.WaitTurn(2, absl::Milliseconds(50));
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(sequencer.WaitTurn(1, absl::Seconds(1)).ok());
  sequencer.Done(1);
  EXPECT_EQ(sequencer.WaitTurn(1, absl::Seconds(1)).code(), absl::StatusCode::kFailedPrecondition);
  sequencer.Reset();  // A new ring generation starts over at 1.
  EXPECT_TRUE(sequencer.WaitTurn(1, absl::Seconds(1)).ok());
}

// A call withdrawn before its turn (Done early) must not hold up later ones.
TEST(CallSequencerTest, CallsDoneBeforeTheirTurnAreSkipped) {
  CallSequencer sequencer;
  sequencer.Done(2);  // Withdrawn.
  sequencer.Done(3);  // Withdrawn.
  EXPECT_EQ(sequencer.WaitTurn(4, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);  // 1 has not run yet.
  std::thread four([&] {
    EXPECT_TRUE(sequencer.WaitTurn(4, absl::Seconds(10)).ok());
    sequencer.Done(4);
  });
  ASSERT_TRUE(sequencer.WaitTurn(1, absl::Seconds(1)).ok());
  sequencer.Done(1);
  four.join();
  EXPECT_TRUE(sequencer.WaitTurn(5, absl::Seconds(1)).ok());
  sequencer.Reset();  // Early dones belong to their generation only.
  sequencer.Done(2);
  sequencer.Reset();
  ASSERT_TRUE(sequencer.WaitTurn(1, absl::Seconds(1)).ok());
  sequencer.Done(1);
  EXPECT_EQ(sequencer.WaitTurn(3, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace ringattn::server
