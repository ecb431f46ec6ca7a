// ShmFile against real POSIX shared-memory objects, including an object
// shrunk and unlinked under an open descriptor.
#include "server/shm/shm_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/testing/shm_object.h"

namespace ringattn::shm {
namespace {

using Object = ::ringattn::testing::ShmObject;

std::vector<std::byte> Bytes(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 7 + seed) & 0xff);
  return v;
}

TEST(ShmFileTest, WritesAndReadsAtOffsets) {
  Object obj(4096);
  absl::StatusOr<ShmFile> f = ShmFile::Open(obj.name());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*f->Size(), 4096u);
  const std::vector<std::byte> data = Bytes(1000, 3);
  ASSERT_TRUE(f->Write(3000, data).ok());
  std::vector<std::byte> back(1000);
  ASSERT_TRUE(f->Read(3000, back).ok());
  EXPECT_EQ(back, data);
  // Another descriptor of the same object sees the bytes.
  std::vector<std::byte> raw(1000);
  ASSERT_EQ(pread(obj.fd(), raw.data(), raw.size(), 3000), 1000);
  EXPECT_EQ(raw, data);
}

TEST(ShmFileTest, BadNamesAndMissingObjectsAreClearErrors) {
  for (const std::string& name : {std::string(""), std::string("/"), std::string("noslash"),
                                  std::string("/a/b"), std::string(300, 'x')}) {
    EXPECT_EQ(ShmFile::Open(name).status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
  EXPECT_EQ(ShmFile::Open("/ringattn_shm_file_test_no_such_object").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ShmFileTest, AShrunkObjectFailsReadsAndWritesInsteadOfCrashing) {
  Object obj(1 << 20);
  absl::StatusOr<ShmFile> f = ShmFile::Open(obj.name());
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(ftruncate(obj.fd(), 4096), 0);  // The owner shrinks it under the open file.
  std::vector<std::byte> buf(8192);
  const absl::Status read = f->Read(0, buf);
  EXPECT_EQ(read.code(), absl::StatusCode::kFailedPrecondition) << read;
  EXPECT_NE(std::string(read.message()).find("shrunk"), std::string::npos) << read;
  EXPECT_EQ(f->Write(4000, buf).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*f->Size(), 4096u) << "a refused write must not grow the object";
  // What is left is still readable.
  EXPECT_TRUE(f->Read(0, std::span(buf).first(4096)).ok());
}

TEST(ShmFileTest, AnUnlinkedObjectStaysReadableThroughItsDescriptorButIsGoneByName) {
  Object obj(4096);
  absl::StatusOr<ShmFile> f = ShmFile::Open(obj.name());
  ASSERT_TRUE(f.ok()) << f.status();
  const uint64_t inode = f->inode();
  ASSERT_EQ(shm_unlink(obj.name().c_str()), 0);
  std::vector<std::byte> buf(4096);
  EXPECT_TRUE(f->Read(0, buf).ok());
  EXPECT_EQ(ShmFile::Open(obj.name()).status().code(), absl::StatusCode::kNotFound);
  // Made again under the same name: another object.
  const int fd = shm_open(obj.name().c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  absl::StatusOr<ShmFile> again = ShmFile::Open(obj.name());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->inode(), inode);
  close(fd);
}

TEST(ShmFileTest, HostIdIsStableAndNamesBootAndShmDevice) {
  const std::string id = ShmHostId();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(id, ShmHostId());
  EXPECT_NE(id.find('/'), std::string::npos) << id;
}

}  // namespace
}  // namespace ringattn::shm
