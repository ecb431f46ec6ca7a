#include "client/shared_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::client {

absl::StatusOr<std::unique_ptr<SharedRegion>> SharedRegion::Create(const std::string& shm_name,
                                                                   uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("a shared region needs at least one byte");
  const int fd = shm_open(shm_name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    const std::string why = absl::StrCat("creating '", shm_name, "': ", std::strerror(errno));
    return errno == EEXIST ? absl::AlreadyExistsError(why) : absl::InternalError(why);
  }
  auto fail = [&](const char* what) {
    const std::string why = absl::StrCat(what, " '", shm_name, "': ", std::strerror(errno));
    close(fd);
    shm_unlink(shm_name.c_str());
    return absl::ResourceExhaustedError(why);
  };
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) return fail("sizing");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail("mapping");
  close(fd);  // The mapping keeps the object.
  return std::unique_ptr<SharedRegion>(
      new SharedRegion(shm_name, static_cast<std::byte*>(p), bytes));
}

absl::StatusOr<std::unique_ptr<SharedRegion>> SharedRegion::CreateUnique(const std::string& tag,
                                                                         uint64_t bytes) {
  static std::atomic<uint64_t> next{0};
  return Create(absl::StrCat("/ringattn_", getpid(), "_", next++, "_", tag), bytes);
}

SharedRegion::~SharedRegion() {
  munmap(data_, size_);
  shm_unlink(name_.c_str());
}

}  // namespace ringattn::client
