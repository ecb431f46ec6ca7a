#include "server/shm/shm_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace ringattn::shm {
namespace {

absl::Status Errno(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case EINVAL:
    case ENAMETOOLONG:
    case ELOOP:
      return absl::InvalidArgumentError(message);
    default:
      return absl::FailedPreconditionError(message);
  }
}

bool ValidName(const std::string& name) {
  return name.size() >= 2 && name.size() <= 255 && name[0] == '/' &&
         name.find('/', 1) == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

absl::StatusOr<ShmFile> ShmFile::Open(const std::string& name) {
  if (!ValidName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory name '", name, "' must be '/' and 1 to 254 more characters, no '/'"));
  }
  const int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) return Errno(errno, absl::StrCat("shared-memory object '", name, "'"));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' is not a plain shared-memory object"));
  }
  return ShmFile(name, fd, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
}

ShmFile::ShmFile(ShmFile&& other) noexcept
    : name_(std::move(other.name_)),
      fd_(std::exchange(other.fd_, -1)),
      device_(other.device_),
      inode_(other.inode_) {}

ShmFile& ShmFile::operator=(ShmFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    name_ = std::move(other.name_);
    fd_ = std::exchange(other.fd_, -1);
    device_ = other.device_;
    inode_ = other.inode_;
  }
  return *this;
}

ShmFile::~ShmFile() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<uint64_t> ShmFile::Size() const {
  struct stat st {};
  if (fstat(fd_, &st) != 0) return Errno(errno, absl::StrCat("fstat of '", name_, "'"));
  return static_cast<uint64_t>(st.st_size);
}

absl::Status ShmFile::Read(uint64_t offset, std::span<std::byte> dst) const {
  size_t done = 0;
  while (done < dst.size()) {
    const ssize_t n =
        pread(fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(errno, absl::StrCat("reading '", name_, "'"));
    if (n == 0) {
      return absl::FailedPreconditionError(absl::StrCat("shared-memory region '", name_,
                                                        "' ends before byte ", offset + dst.size(),
                                                        " (it was shrunk)"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ShmFile::Write(uint64_t offset, std::span<const std::byte> src) const {
  const absl::StatusOr<uint64_t> size = Size();
  if (!size.ok()) return size.status();
  if (*size < offset || *size - offset < src.size()) {
    return absl::FailedPreconditionError(absl::StrCat("shared-memory region '", name_,
                                                      "' ends at byte ", *size, ", before ",
                                                      offset + src.size(), " (it was shrunk)"));
  }
  size_t done = 0;
  while (done < src.size()) {
    const ssize_t n =
        pwrite(fd_, src.data() + done, src.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno(n < 0 ? errno : EIO, absl::StrCat("writing '", name_, "'"));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string ShmHostId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string boot;
  if (!std::getline(in, boot) || boot.empty()) return "";
  struct stat st {};
  if (stat("/dev/shm", &st) != 0) return "";
  return absl::StrCat(absl::StripAsciiWhitespace(boot), "/", static_cast<uint64_t>(st.st_dev));
}

}  // namespace ringattn::shm
