#include "server/common/bounded_queue.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::server {
namespace {

using std::chrono_literals::operator""ms;

TEST(BoundedQueueTest, DeliversEveryItemInOrderAcrossThreads) {
  BoundedQueue<int> q(3);
  constexpr int kItems = 10000;
  std::thread producer([&] {
    for (int i = 0; i < kItems; ++i) ASSERT_TRUE(q.Push(i));
    q.Close();
  });
  std::vector<int> got;
  while (std::optional<int> v = q.Pop()) got.push_back(*v);
  producer.join();
  ASSERT_EQ(got.size(), size_t{kItems});
  for (int i = 0; i < kItems; ++i) EXPECT_EQ(got[i], i);
}

TEST(BoundedQueueTest, AFullQueueHoldsTheProducerUntilTheConsumerTakes) {
  BoundedQueue<int> q(2);
  ASSERT_TRUE(q.Push(1));
  ASSERT_TRUE(q.Push(2));
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    EXPECT_TRUE(q.Push(3));
    pushed = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(pushed.load()) << "a third item went into a queue of two";
  EXPECT_EQ(q.Pop(), 1);
  producer.join();
  EXPECT_TRUE(pushed.load());
  q.Close();
  EXPECT_EQ(q.Pop(), 2);
  EXPECT_EQ(q.Pop(), 3);
  EXPECT_EQ(q.Pop(), std::nullopt);
  EXPECT_FALSE(q.Push(4)) << "a closed queue took an item";
}

TEST(BoundedQueueTest, CancelReleasesABlockedProducerAndDropsItems) {
  BoundedQueue<int> q(1);
  ASSERT_TRUE(q.Push(1));
  std::thread producer([&] { EXPECT_FALSE(q.Push(2)); });
  std::this_thread::sleep_for(20ms);
  q.Cancel();
  producer.join();
  EXPECT_EQ(q.Pop(), std::nullopt);
}

TEST(BoundedQueueTest, CloseWakesAWaitingConsumer) {
  BoundedQueue<int> q(4);
  std::thread consumer([&] { EXPECT_EQ(q.Pop(), std::nullopt); });
  std::this_thread::sleep_for(20ms);
  q.Close();
  consumer.join();
}

}  // namespace
}  // namespace ringattn::server
