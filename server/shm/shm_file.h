#ifndef RINGATTN_SERVER_SHM_SHM_FILE_H_
#define RINGATTN_SERVER_SHM_SHM_FILE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// A client's POSIX shared-memory object, as the service reads and writes
// it: through pread/pwrite on its descriptor, never a mapping. An object
// its owner shrinks (ftruncate) or unlinks under a call can then only make
// that call fail: a read past its end comes back short (an error here),
// where a mapping would have raised SIGBUS in the service.

namespace ringattn::shm {

class ShmFile {
 public:
  // Opens `name` ("/" and 1-254 more characters, no other "/") read-write.
  // INVALID_ARGUMENT for a bad name or an object that is not a plain
  // shared-memory file, NOT_FOUND when there is none, PERMISSION_DENIED when
  // this process may not open it.
  static absl::StatusOr<ShmFile> Open(const std::string& name);

  ShmFile(ShmFile&& other) noexcept;
  ShmFile& operator=(ShmFile&& other) noexcept;
  ShmFile(const ShmFile&) = delete;
  ShmFile& operator=(const ShmFile&) = delete;
  ~ShmFile();

  const std::string& name() const { return name_; }
  // Which object it is (st_dev, st_ino): the same name unlinked and created
  // again is another object.
  uint64_t device() const { return device_; }
  uint64_t inode() const { return inode_; }
  // Its size now.
  absl::StatusOr<uint64_t> Size() const;

  // Reads dst.size() bytes at `offset`: FAILED_PRECONDITION when the object
  // holds fewer (it was shrunk).
  absl::Status Read(uint64_t offset, std::span<std::byte> dst) const;
  // Writes `src` at `offset`: FAILED_PRECONDITION when the object ends
  // before offset + src.size() (it is never grown on purpose).
  absl::Status Write(uint64_t offset, std::span<const std::byte> src) const;

 private:
  ShmFile(std::string name, int fd, uint64_t device, uint64_t inode)
      : name_(std::move(name)), fd_(fd), device_(device), inode_(inode) {}

  std::string name_;
  int fd_ = -1;
  uint64_t device_ = 0;
  uint64_t inode_ = 0;
};

// Which POSIX shared memory this process sees: the kernel's boot id and the
// device of /dev/shm, where shm_open's objects live. Two processes with the
// same id open the same object for the same name (same host, same /dev/shm
// mount: a container with its own /dev/shm has another id). Empty when
// either cannot be read.
std::string ShmHostId();

}  // namespace ringattn::shm

#endif  // RINGATTN_SERVER_SHM_SHM_FILE_H_
