#ifndef RINGATTN_SERVER_WORKER_GRPC_STORE_H_
#define RINGATTN_SERVER_WORKER_GRPC_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "server/ring/store.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::worker {

// The ring's rendezvous store, backed by the coordinator's control service.
class GrpcStore : public ring::Store {
 public:
  explicit GrpcStore(std::shared_ptr<worker::v1::CoordinatorControl::StubInterface> stub)
      : stub_(std::move(stub)) {}

  absl::Status Set(absl::string_view key, const std::vector<char>& value) override;
  absl::StatusOr<std::vector<char>> Get(absl::string_view key) override;
  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override;

 private:
  absl::StatusOr<std::vector<char>> GetWaiting(absl::string_view key, absl::Duration wait);

  std::shared_ptr<worker::v1::CoordinatorControl::StubInterface> stub_;
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_GRPC_STORE_H_
