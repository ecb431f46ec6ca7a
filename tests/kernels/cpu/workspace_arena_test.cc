#include "kernels/cpu/workspace_arena.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "gtest/gtest.h"

namespace ringattn::kernels::cpu {
namespace {

bool AllZero(const float* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0.0f) return false;
  }
  return true;
}

TEST(WorkspaceArenaTest, PartsAreAlignedDisjointAndZeroEvenWhenReused) {
  WorkspaceArena arena;
  for (int call = 0; call < 3; ++call) {
    absl::StatusOr<WorkspaceArena::Lease> lease = arena.Carve({100, 0, 37, 1000}, "test");
    ASSERT_TRUE(lease.ok()) << lease.status();
    EXPECT_EQ((*lease)[1], nullptr);
    for (size_t i : {0, 2, 3}) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>((*lease)[i]) % 64, 0u);
    }
    EXPECT_GE((*lease)[2], (*lease)[0] + 100);
    EXPECT_GE((*lease)[3], (*lease)[2] + 37);
    EXPECT_TRUE(AllZero((*lease)[0], 100));
    EXPECT_TRUE(AllZero((*lease)[2], 37));
    EXPECT_TRUE(AllZero((*lease)[3], 1000));
    // Dirty everything: the next call must see zeros again.
    for (size_t i = 0; i < 100; ++i) (*lease)[0][i] = 1.0f;
    for (size_t i = 0; i < 1000; ++i) (*lease)[3][i] = -2.0f;
  }
}

TEST(WorkspaceArenaTest, CallsLargerThanTheCacheGetZeroedMemoryOfTheirOwn) {
  WorkspaceArena arena;
  const size_t big = WorkspaceArena::kMaxCachedBytes / sizeof(float) + 16;
  for (int call = 0; call < 2; ++call) {
    absl::StatusOr<WorkspaceArena::Lease> lease = arena.Carve({big}, "big");
    ASSERT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(AllZero((*lease)[0], big));
    (*lease)[0][big - 1] = 3.0f;
  }
}

TEST(WorkspaceArenaTest, ImpossibleSizesAreResourceExhausted) {
  WorkspaceArena arena;
  absl::StatusOr<WorkspaceArena::Lease> lease = arena.Carve({SIZE_MAX / 2}, "huge");
  ASSERT_FALSE(lease.ok());
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(lease.status().message().find("huge"), absl::string_view::npos);
}

TEST(WorkspaceArenaTest, ALeaseHoldsTheArenaUntilItIsReleased) {
  WorkspaceArena arena;
  std::atomic<bool> second_got_it{false};
  std::thread second;
  {
    absl::StatusOr<WorkspaceArena::Lease> first = arena.Carve({64}, "first");
    ASSERT_TRUE(first.ok());
    second = std::thread([&] {
      absl::StatusOr<WorkspaceArena::Lease> lease = arena.Carve({64}, "second");
      second_got_it = lease.ok();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(second_got_it.load());
  }
  second.join();
  EXPECT_TRUE(second_got_it.load());
}

}  // namespace
}  // namespace ringattn::kernels::cpu
