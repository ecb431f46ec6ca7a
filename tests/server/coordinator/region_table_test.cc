// The coordinator's region table: ownership, names, bounds and shrinking.
#include "server/coordinator/region_table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/server/testing/shm_object.h"

namespace ringattn::coordinator {
namespace {

using Object = ::ringattn::testing::ShmObject;

attention::v1::TensorRef Ref(const std::string& region, uint64_t offset, uint64_t bytes) {
  attention::v1::TensorRef ref;
  ref.set_name("q");
  ref.set_region(region);
  ref.set_offset(offset);
  ref.set_byte_size(bytes);
  return ref;
}

TEST(RegionTableTest, RegistersListsAndUnregistersPerOwner) {
  Object a(8192), b(4096);
  RegionTable t({});
  ASSERT_TRUE(t.Register("id:alice", "ra", a.name(), 8192).ok());
  ASSERT_TRUE(t.Register("id:bob", "rb", b.name(), 1000).ok());
  const auto alice = t.List("id:alice");
  ASSERT_EQ(alice.size(), 1u);
  EXPECT_EQ(alice[0]->name, "ra");
  EXPECT_EQ(alice[0]->byte_size, 8192u);
  EXPECT_EQ(t.Register("id:alice", "rb", a.name(), 10).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(t.Unregister("id:alice", "rb").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(t.Unregister("id:alice", "nope").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(t.Unregister("id:bob", "rb").ok());
  EXPECT_TRUE(t.List("id:bob").empty());
  EXPECT_EQ(t.Count(), 1);
}

TEST(RegionTableTest, RefusesBadRegistrations) {
  Object a(4096);
  RegionTable t({.max_regions_per_client = 2});
  EXPECT_EQ(t.Register("o", "r", a.name(), 4097).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Register("o", "r", a.name(), 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Register("o", "", a.name(), 10).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Register("o", "r", "/ringattn_region_table_test_none", 10).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(t.Register("o", "r", "bad/name", 10).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(t.Register("o", "r1", a.name(), 10).ok());
  ASSERT_TRUE(t.Register("o", "r2", a.name(), 10).ok());
  EXPECT_EQ(t.Register("o", "r3", a.name(), 10).code(), absl::StatusCode::kResourceExhausted);
}

TEST(RegionTableTest, ResolveChecksOwnerSizeAndBounds) {
  Object a(8192);
  RegionTable t({});
  ASSERT_TRUE(t.Register("id:alice", "ra", a.name(), 6000).ok());
  absl::StatusOr<RegionTensor> ok = t.Resolve("id:alice", Ref("ra", 1000, 5000), 5000);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->offset, 1000u);
  EXPECT_EQ(t.Resolve("id:bob", Ref("ra", 0, 100), 100).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(t.Resolve("id:alice", Ref("rz", 0, 100), 100).status().code(),
            absl::StatusCode::kNotFound);
  // Past the registered size (though inside the object), a wrong size, and
  // offsets that overflow.
  EXPECT_EQ(t.Resolve("id:alice", Ref("ra", 1001, 5000), 5000).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Resolve("id:alice", Ref("ra", 0, 99), 100).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Resolve("id:alice", Ref("ra", ~uint64_t{0} - 10, 100), 100).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Shrunk by its owner after registration.
  ASSERT_EQ(ftruncate(a.fd(), 2000), 0);
  EXPECT_EQ(t.Resolve("id:alice", Ref("ra", 1000, 5000), 5000).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(t.Resolve("id:alice", Ref("ra", 0, 2000), 2000).ok());
}

TEST(RegionTableTest, ACallKeepsItsRegionOpenPastUnregister) {
  Object a(4096);
  RegionTable t({});
  ASSERT_TRUE(t.Register("o", "r", a.name(), 4096).ok());
  absl::StatusOr<RegionTensor> held = t.Resolve("o", Ref("r", 0, 4096), 4096);
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(t.Unregister("o", "r").ok());
  EXPECT_EQ(t.Resolve("o", Ref("r", 0, 4096), 4096).status().code(), absl::StatusCode::kNotFound);
  std::vector<std::byte> buf(4096);
  EXPECT_TRUE(held->region->file.Read(0, buf).ok());
}

TEST(RegionTableTest, IdleRegionsExpire) {
  Object a(4096);
  RegionTable t({.idle_ttl = absl::Milliseconds(50)});
  ASSERT_TRUE(t.Register("o", "r", a.name(), 4096).ok());
  absl::SleepFor(absl::Milliseconds(120));
  EXPECT_TRUE(t.List("o").empty());
  EXPECT_EQ(t.Count(), 0);
}

}  // namespace
}  // namespace ringattn::coordinator
