#ifndef RINGATTN_CLIENT_SHARED_REGION_H_
#define RINGATTN_CLIENT_SHARED_REGION_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

// A POSIX shared-memory object this process creates and maps, for tensors
// a client shares with a service on its host (AttentionClient's regions):
// inputs are written into it and outputs read from it in place. Unlinked
// and unmapped when it goes.

namespace ringattn::client {

class SharedRegion {
 public:
  // A new object `shm_name` ("/name") of `bytes` bytes, zeroed.
  // ALREADY_EXISTS when the name is taken.
  static absl::StatusOr<std::unique_ptr<SharedRegion>> Create(const std::string& shm_name,
                                                              uint64_t bytes);
  // The same with a name of this process's own ("/ringattn_<pid>_<n>_<tag>").
  static absl::StatusOr<std::unique_ptr<SharedRegion>> CreateUnique(const std::string& tag,
                                                                    uint64_t bytes);
  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  const std::string& shm_name() const { return name_; }
  uint64_t size() const { return size_; }
  std::span<std::byte> bytes() { return {data_, static_cast<size_t>(size_)}; }
  std::span<const std::byte> bytes() const { return {data_, static_cast<size_t>(size_)}; }

 private:
  SharedRegion(std::string name, std::byte* data, uint64_t size)
      : name_(std::move(name)), data_(data), size_(size) {}

  std::string name_;
  std::byte* data_;
  uint64_t size_;
};

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_SHARED_REGION_H_
