// The session table: handles a stranger cannot guess, the memory budget and
// per-client limits, and release of what the workers hold.

#include "server/coordinator/session_table.h"

#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/coordinator/coordinator_metrics.h"

namespace ringattn::coordinator {
namespace {

class SessionTableTest : public ::testing::Test {
 protected:
  SessionTable MakeTable(SessionLimits limits) {
    return SessionTable(limits, metrics_, [this](const std::vector<std::string>& handles) {
      released_.insert(released_.end(), handles.begin(), handles.end());
    });
  }

  prometheus::Registry registry_;
  CoordinatorMetrics metrics_{registry_};
  std::vector<std::string> released_;
};

// A session's contents do not matter to the table.
Session AnySession() {
  ForwardSpec spec;
  spec.wire_layer.set_window(512);
  return Session{std::move(spec), batch::ShardLayout(8, 2), 1, false};
}

// The random part of a handle: what follows "s<counter>-".
std::string RandomPart(const std::string& handle) { return handle.substr(handle.find('-') + 1); }

TEST_F(SessionTableTest, HandlesCarry128RandomBits) {
  SessionTable table = MakeTable({.memory_budget_bytes = 0, .ttl = absl::Minutes(5)});
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<SessionTable::Reservation> r = table.Reserve("client", 0);
    ASSERT_TRUE(r.ok()) << r.status();
    const std::string random = RandomPart(r->handle());
    ASSERT_EQ(random.size(), 32u) << r->handle();
    EXPECT_EQ(random.find_first_not_of("0123456789abcdef"), std::string::npos) << r->handle();
    EXPECT_TRUE(seen.insert(random).second) << "repeated " << r->handle();
  }
  // Consecutive handles share no long run of digits: the random part is not
  // a counter or a clock.
  std::set<std::string> prefixes;
  for (const std::string& h : seen) prefixes.insert(h.substr(0, 8));
  EXPECT_GT(prefixes.size(), 190u);
}

TEST_F(SessionTableTest, AReservationGrowsWithinTheBudgetAndTheClientsLimit) {
  SessionTable table = MakeTable(
      {.memory_budget_bytes = 100, .ttl = absl::Minutes(5), .max_client_memory_bytes = 70});
  absl::StatusOr<SessionTable::Reservation> a = table.Reserve("a", 0);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->Grow(40).ok());
  ASSERT_TRUE(a->Grow(20).ok());
  EXPECT_EQ(a->bytes(), 60u);
  // Past the client's limit: refused, and nothing taken.
  const absl::Status over = a->Grow(20);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted) << over;
  EXPECT_EQ(a->bytes(), 60u);
  absl::StatusOr<SessionTable::Reservation> b = table.Reserve("b", 30);
  ASSERT_TRUE(b.ok()) << b.status();
  const absl::Status budget = b->Grow(20);  // 60 + 50 > 100.
  EXPECT_EQ(budget.code(), absl::StatusCode::kResourceExhausted) << budget;
  EXPECT_NE(budget.message().find("memory budget"), absl::string_view::npos) << budget;
  // Given back whole, grown part included.
  { SessionTable::Reservation gone = *std::move(a); }
  EXPECT_TRUE(b->Grow(40).ok());  // 70 in all: fits only with a's 60 back.
}

TEST_F(SessionTableTest, BudgetRefusesAndAReservationNotOpenedGivesItsBytesBack) {
  SessionTable table = MakeTable({.memory_budget_bytes = 100, .ttl = absl::Minutes(5)});
  {
    absl::StatusOr<SessionTable::Reservation> a = table.Reserve("a", 80);
    ASSERT_TRUE(a.ok()) << a.status();
    absl::StatusOr<SessionTable::Reservation> b = table.Reserve("b", 30);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_TRUE(table.Reserve("b", 30).ok());
  EXPECT_EQ(table.Count(), 0);
}

TEST_F(SessionTableTest, ASessionOfAProvenIdentityIsItsOwnersAlone) {
  SessionTable table = MakeTable({.memory_budget_bytes = 1000, .ttl = absl::Minutes(5)});
  absl::StatusOr<SessionTable::Reservation> r = table.Reserve("id:alice", 10);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string handle = r->handle();
  table.Open(*std::move(r), AnySession());
  EXPECT_EQ(table.Count(), 1);
  EXPECT_TRUE(table.Find(handle, "id:alice").ok());
  EXPECT_EQ(table.Find(handle, "id:mallory").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table.Release(handle, "id:mallory").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(table.Release(handle, "id:alice").ok());
  EXPECT_EQ(released_, std::vector<std::string>{handle});
  EXPECT_EQ(table.Find(handle, "id:alice").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ringattn::coordinator
