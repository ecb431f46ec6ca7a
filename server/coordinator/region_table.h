#ifndef RINGATTN_SERVER_COORDINATOR_REGION_TABLE_H_
#define RINGATTN_SERVER_COORDINATOR_REGION_TABLE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attention/v1/tensor.pb.h"
#include "server/shm/shm_file.h"

// The clients' shared-memory regions: each opened once at registration and
// owned by the identity that registered it (ClientKey). A call holds the
// regions it names while it runs, so Unregister (or expiry) during a call
// closes the object only once the call is done.

namespace ringattn::coordinator {

struct Region {
  std::string name;  // The client's name for it.
  std::string owner;
  uint64_t byte_size = 0;  // Bytes the service may use, from offset 0.
  shm::ShmFile file;
};

// A tensor of a call in a region, checked against it.
struct RegionTensor {
  std::shared_ptr<const Region> region;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

class RegionTable {
 public:
  struct Options {
    int max_regions_per_client = 64;
    // A region not used for this long is released, as a session would be:
    // its client may be gone without unregistering it.
    absl::Duration idle_ttl = absl::Minutes(30);
  };
  explicit RegionTable(Options options) : options_(options) {}

  // Opens `shm_name` for `owner` as `name`: INVALID_ARGUMENT for a bad name
  // or size (byte_size 0, or more than the object holds), NOT_FOUND for no
  // such object, ALREADY_EXISTS for a name taken (by anyone: names are one
  // namespace so that another's is PERMISSION_DENIED, not NOT_FOUND),
  // RESOURCE_EXHAUSTED past the per-client limit.
  absl::Status Register(const std::string& owner, const std::string& name,
                        const std::string& shm_name, uint64_t byte_size);
  // NOT_FOUND, or PERMISSION_DENIED for another owner's region.
  absl::Status Unregister(const std::string& owner, const std::string& name);
  // `owner`'s regions, by name.
  std::vector<std::shared_ptr<const Region>> List(const std::string& owner);
  // A tensor of `expected_bytes` named by `ref` for a call of `owner`:
  // NOT_FOUND or PERMISSION_DENIED for the region, INVALID_ARGUMENT for a
  // size that is not the tensor's or a range outside the registered bytes,
  // FAILED_PRECONDITION when the object was shrunk below them.
  absl::StatusOr<RegionTensor> Resolve(const std::string& owner,
                                       const attention::v1::TensorRef& ref,
                                       uint64_t expected_bytes);
  int Count();

 private:
  struct Entry {
    std::shared_ptr<const Region> region;
    absl::Time last_used;
  };
  void ExpireLocked(absl::Time now);  // Requires mu_.

  const Options options_;
  std::mutex mu_;
  std::map<std::string, Entry> regions_;  // By name. Guarded by mu_.
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_REGION_TABLE_H_
