#include "server/worker/call_sequencer.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::worker {
namespace {

constexpr uint64_t kGen = 0;  // A fresh sequencer's generation.

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
      ASSERT_TRUE(sequencer.WaitTurn(kGen, seq, absl::Seconds(10)).ok());
      if (running.fetch_add(1) != 0) overlap = true;
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(seq);
      }
      running.fetch_sub(1);
      sequencer.Done(kGen, seq);
    });
  }
  for (auto& t : calls) t.join();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(overlap);
}

TEST(CallSequencerTest, MissingEarlierCallTimesOutAndPastCallsAreRefused) {
  CallSequencer sequencer;
  const absl::Status late = sequencer.WaitTurn(kGen, 2, absl::Milliseconds(50));
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(sequencer.WaitTurn(kGen, 1, absl::Seconds(1)).ok());
  sequencer.Done(kGen, 1);
  EXPECT_EQ(sequencer.WaitTurn(kGen, 1, absl::Seconds(1)).code(),
            absl::StatusCode::kFailedPrecondition);
  sequencer.Reset(kGen);  // A new ring generation starts over at 1.
  EXPECT_TRUE(sequencer.WaitTurn(kGen, 1, absl::Seconds(1)).ok());
}

// Errors reach the public API through the coordinator: they must not tell
// a caller how far the ring's call numbers have gone.
TEST(CallSequencerTest, ErrorsNameNoCallNumbers) {
  CallSequencer sequencer;
  for (uint64_t seq = 1; seq <= 7; ++seq) {
    ASSERT_TRUE(sequencer.WaitTurn(kGen, seq, absl::Seconds(1)).ok());
    sequencer.Done(kGen, seq);
  }
  const absl::Status stale = sequencer.WaitTurn(kGen, 3, absl::Seconds(1));
  const absl::Status early = sequencer.WaitTurn(kGen, 9, absl::Milliseconds(20));
  ASSERT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(early.code(), absl::StatusCode::kDeadlineExceeded);
  for (const absl::Status& s : {stale, early}) {
    EXPECT_EQ(std::string(s.message()).find_first_of("0123456789"), std::string::npos)
        << s.message();
  }
}

// A call withdrawn before its turn (Done early) must not hold up later ones.
TEST(CallSequencerTest, CallsDoneBeforeTheirTurnAreSkipped) {
  CallSequencer sequencer;
  sequencer.Done(kGen, 2);  // Withdrawn.
  sequencer.Done(kGen, 3);  // Withdrawn.
  EXPECT_EQ(sequencer.WaitTurn(kGen, 4, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);  // 1 has not run yet.
  std::thread four([&] {
    EXPECT_TRUE(sequencer.WaitTurn(kGen, 4, absl::Seconds(10)).ok());
    sequencer.Done(kGen, 4);
  });
  ASSERT_TRUE(sequencer.WaitTurn(kGen, 1, absl::Seconds(1)).ok());
  sequencer.Done(kGen, 1);
  four.join();
  EXPECT_TRUE(sequencer.WaitTurn(kGen, 5, absl::Seconds(1)).ok());
  sequencer.Reset(kGen);  // Early dones belong to their generation only.
  sequencer.Done(kGen, 2);
  sequencer.Reset(kGen);
  ASSERT_TRUE(sequencer.WaitTurn(kGen, 1, absl::Seconds(1)).ok());
  sequencer.Done(kGen, 1);
  EXPECT_EQ(sequencer.WaitTurn(kGen, 3, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
}

// A call of an old ring finishing after the rebuild must not move the new
// ring's order, and calls still waiting for an old ring's turn give up.
TEST(CallSequencerTest, CallsOfAnOldGenerationCannotTouchTheNewOne) {
  CallSequencer sequencer;
  sequencer.Reset(1);
  ASSERT_TRUE(sequencer.WaitTurn(1, 1, absl::Seconds(1)).ok());
  absl::Status waiting;
  std::thread old([&] { waiting = sequencer.WaitTurn(1, 3, absl::Seconds(30)); });
  sequencer.Reset(2);  // Rebuilt while call 1 of generation 1 runs.
  old.join();
  EXPECT_EQ(waiting.code(), absl::StatusCode::kUnavailable);
  sequencer.Done(1, 1);  // The old call finishes late.
  sequencer.Done(1, 2);
  EXPECT_EQ(sequencer.WaitTurn(2, 2, absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(sequencer.WaitTurn(2, 1, absl::Seconds(1)).ok());
}

}  // namespace
}  // namespace ringattn::worker
