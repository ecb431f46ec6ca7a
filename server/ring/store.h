#ifndef RINGATTN_SERVER_RING_STORE_H_
#define RINGATTN_SERVER_RING_STORE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

// The rendezvous store of a ring: three methods, as in Gloo. Tests back it
// with files; the coordinator backs it over its control API.

namespace ringattn::ring {

class Store {
 public:
  virtual ~Store() = default;
  virtual absl::Status Set(absl::string_view key, const std::vector<char>& value) = 0;
  // NOT_FOUND if the key is absent.
  virtual absl::StatusOr<std::vector<char>> Get(absl::string_view key) = 0;
  // DEADLINE_EXCEEDED unless every key is present within `timeout`.
  virtual absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) = 0;
};

// A store in a directory shared by the ranks (one file per key, written
// atomically by rename).
class FileStore : public Store {
 public:
  explicit FileStore(std::string dir);

  absl::Status Set(absl::string_view key, const std::vector<char>& value) override;
  absl::StatusOr<std::vector<char>> Get(absl::string_view key) override;
  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override;

 private:
  std::string PathOf(absl::string_view key) const;

  std::string dir_;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_STORE_H_
