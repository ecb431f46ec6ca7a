#ifndef RINGATTN_TESTS_SERVER_TESTING_SHM_OBJECT_H_
#define RINGATTN_TESTS_SERVER_TESTING_SHM_OBJECT_H_

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ringattn::testing {

// A POSIX shared-memory object of the calling test, `bytes` long and
// unlinked at the end; its descriptor lets a test shrink it under a reader.
class ShmObject {
 public:
  explicit ShmObject(uint64_t bytes) {
    static std::atomic<int> next{0};
    name_ = absl::StrCat("/ringattn_test_", getpid(), "_", next++);
    fd_ = shm_open(name_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(bytes)), 0);
  }
  ~ShmObject() {
    close(fd_);
    shm_unlink(name_.c_str());
  }
  ShmObject(const ShmObject&) = delete;
  ShmObject& operator=(const ShmObject&) = delete;

  const std::string& name() const { return name_; }
  int fd() const { return fd_; }

 private:
  std::string name_;
  int fd_ = -1;
};

}  // namespace ringattn::testing

#endif  // RINGATTN_TESTS_SERVER_TESTING_SHM_OBJECT_H_
