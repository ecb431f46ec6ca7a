#include "server/coordinator/control_service.h"

#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/wire/cluster_secret.h"
#include "proto/wire/grpc_status.h"

namespace ringattn::coordinator {

grpc::Status ControlServiceImpl::Register(grpc::ServerContext* context,
                                          const worker::v1::RegisterRequest* request,
                                          worker::v1::RegisterResponse* response) {
  if (absl::Status s = wire::CheckClusterSecret(*context, cluster_secret_); !s.ok()) {
    return wire::ToGrpc(s);
  }
  if (request->address().empty()) {
    return wire::ToGrpc(absl::InvalidArgumentError("address is required"));
  }
  const absl::StatusOr<int> rank = cluster_.Register(
      request->address(), request->has_rank() ? std::optional<int>(request->rank()) : std::nullopt,
      request->incarnation(), request->shm_host_id());
  if (!rank.ok()) return wire::ToGrpc(rank.status());
  response->set_cp(cluster_.cp());
  response->set_rank(*rank);
  response->set_coordinator_id(coordinator_id_);
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::StoreSet(grpc::ServerContext* context,
                                          const worker::v1::StoreSetRequest* request,
                                          worker::v1::StoreSetResponse* /*response*/) {
  if (absl::Status s = wire::CheckClusterSecret(*context, cluster_secret_); !s.ok()) {
    return wire::ToGrpc(s);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    store_[request->key()] = request->value();
  }
  cv_.notify_all();
  return grpc::Status::OK;
}

grpc::Status ControlServiceImpl::StoreGet(grpc::ServerContext* context,
                                          const worker::v1::StoreGetRequest* request,
                                          worker::v1::StoreGetResponse* response) {
  if (absl::Status s = wire::CheckClusterSecret(*context, cluster_secret_); !s.ok()) {
    return wire::ToGrpc(s);
  }
  const double wait = std::min(std::max(request->wait_seconds(), 0.0), 600.0);
  std::unique_lock<std::mutex> lock(mu_);
  const bool found = cv_.wait_for(lock, std::chrono::duration<double>(wait),
                                  [&] { return store_.contains(request->key()); });
  if (!found) {
    return wire::ToGrpc(
        absl::NotFoundError(absl::StrCat("store key '", request->key(), "' is not set")));
  }
  response->set_value(store_[request->key()]);
  return grpc::Status::OK;
}

}  // namespace ringattn::coordinator
