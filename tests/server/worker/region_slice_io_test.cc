// A worker's reads and writes of its shard in a client's region: the runs
// of a strided slice, zeros for padding, and every bad slice refused before
// a byte moves.
#include "server/worker/region_slice_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ringattn::worker {
namespace {

class Object {
 public:
  explicit Object(uint64_t bytes) {
    static std::atomic<int> next{0};
    name_ = absl::StrCat("/ringattn_region_slice_test_", getpid(), "_", next++);
    fd_ = shm_open(name_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(bytes)), 0);
    struct stat st {};
    fstat(fd_, &st);
    device_ = st.st_dev;
    inode_ = st.st_ino;
  }
  ~Object() {
    close(fd_);
    shm_unlink(name_.c_str());
  }
  const std::string& name() const { return name_; }
  int fd() const { return fd_; }
  uint64_t device() const { return device_; }
  uint64_t inode() const { return inode_; }

 private:
  std::string name_;
  int fd_ = -1;
  uint64_t device_ = 0, inode_ = 0;
};

// Rows of 10 bytes at base 4; the shard takes bytes [6, 10) of each row
// into [0, 4) of its 6-byte rows (the rest: padding).
worker::v1::RegionSlice Slice(const Object& obj, uint64_t rows) {
  worker::v1::RegionSlice s;
  s.set_name("q");
  s.set_shm_name(obj.name());
  s.set_device(obj.device());
  s.set_inode(obj.inode());
  s.set_base(4);
  s.set_rows(rows);
  s.set_row_bytes(10);
  s.set_shard_row_bytes(6);
  auto* run = s.add_runs();
  run->set_tensor_offset(6);
  run->set_shard_offset(0);
  run->set_bytes(4);
  return s;
}

TEST(RegionSliceIoTest, ReadsTheStridedSliceAndWritesItBack) {
  Object obj(64);
  std::vector<uint8_t> all(64);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint8_t>(i);
  ASSERT_EQ(pwrite(obj.fd(), all.data(), all.size(), 0), 64);
  absl::StatusOr<RegionSliceIo> io = RegionSliceIo::Open(Slice(obj, 3), 18);
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<std::vector<std::byte>> shard = io->Read();
  ASSERT_TRUE(shard.ok()) << shard.status();
  ASSERT_EQ(shard->size(), 18u);
  for (uint64_t row = 0; row < 3; ++row) {
    for (uint64_t i = 0; i < 6; ++i) {
      const uint8_t want = i < 4 ? static_cast<uint8_t>(4 + row * 10 + 6 + i) : 0;
      EXPECT_EQ(static_cast<uint8_t>((*shard)[row * 6 + i]), want) << row << "," << i;
    }
  }
  std::vector<std::byte> out(18, std::byte{0xee});
  ASSERT_TRUE(io->Write(out).ok());
  std::vector<uint8_t> back(64);
  ASSERT_EQ(pread(obj.fd(), back.data(), back.size(), 0), 64);
  for (size_t i = 0; i < 64; ++i) {
    const bool in_run = i >= 4 && i < 34 && (i - 4) % 10 >= 6;
    EXPECT_EQ(back[i], in_run ? 0xee : static_cast<uint8_t>(i)) << i;
  }
}

TEST(RegionSliceIoTest, RefusesSlicesOutsideTheirRowsShardOrObject) {
  Object obj(64);
  EXPECT_EQ(RegionSliceIo::Open(Slice(obj, 3), 17).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_run = Slice(obj, 3);
  bad_run.mutable_runs(0)->set_bytes(5);  // Past the row's end.
  EXPECT_EQ(RegionSliceIo::Open(bad_run, 18).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_shard = Slice(obj, 3);
  bad_shard.mutable_runs(0)->set_shard_offset(3);  // Past the shard row's end.
  EXPECT_EQ(RegionSliceIo::Open(bad_shard, 18).status().code(), absl::StatusCode::kInvalidArgument);
  // 7 rows of 10 at 4 end at byte 74, past the object's 64.
  EXPECT_EQ(RegionSliceIo::Open(Slice(obj, 7), 42).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto overflow = Slice(obj, 3);
  overflow.set_base(~uint64_t{0} - 5);
  EXPECT_EQ(RegionSliceIo::Open(overflow, 18).status().code(), absl::StatusCode::kInvalidArgument);
  auto other = Slice(obj, 3);
  other.set_inode(obj.inode() + 1);  // Another object under the same name.
  EXPECT_EQ(RegionSliceIo::Open(other, 18).status().code(), absl::StatusCode::kFailedPrecondition);
  auto missing = Slice(obj, 3);
  missing.set_shm_name("/ringattn_region_slice_test_none");
  EXPECT_EQ(RegionSliceIo::Open(missing, 18).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(RegionSliceIoTest, AnObjectShrunkAfterOpeningFailsTheReadCleanly) {
  Object obj(64);
  absl::StatusOr<RegionSliceIo> io = RegionSliceIo::Open(Slice(obj, 3), 18);
  ASSERT_TRUE(io.ok()) << io.status();
  ASSERT_EQ(ftruncate(obj.fd(), 12), 0);
  EXPECT_EQ(io->Read().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(io->Write(std::vector<std::byte>(18)).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ringattn::worker
