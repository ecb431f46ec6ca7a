#ifndef RINGATTN_SERVER_COORDINATOR_CONTROL_SERVICE_H_
#define RINGATTN_SERVER_COORDINATOR_CONTROL_SERVICE_H_

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "server/coordinator/cluster.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::coordinator {

// The coordinator's side of worker control: registration and the ring's
// rendezvous store (a key-value map; gets wait, bounded, for keys to appear).
class ControlServiceImpl final : public worker::v1::CoordinatorControl::Service {
 public:
  // `coordinator_id` is random per start: workers see a restart in it.
  // `cluster_secret`: what every call must carry (wire/cluster_secret.h).
  ControlServiceImpl(Cluster& cluster, std::string coordinator_id, std::string cluster_secret)
      : cluster_(cluster),
        coordinator_id_(std::move(coordinator_id)),
        cluster_secret_(std::move(cluster_secret)) {}

  grpc::Status Register(grpc::ServerContext* context, const worker::v1::RegisterRequest* request,
                        worker::v1::RegisterResponse* response) override;
  grpc::Status StoreSet(grpc::ServerContext* context, const worker::v1::StoreSetRequest* request,
                        worker::v1::StoreSetResponse* response) override;
  grpc::Status StoreGet(grpc::ServerContext* context, const worker::v1::StoreGetRequest* request,
                        worker::v1::StoreGetResponse* response) override;

 private:
  Cluster& cluster_;
  const std::string coordinator_id_;
  const std::string cluster_secret_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> store_;  // Guarded by mu_.
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_CONTROL_SERVICE_H_
