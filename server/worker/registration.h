#ifndef RINGATTN_SERVER_WORKER_REGISTRATION_H_
#define RINGATTN_SERVER_WORKER_REGISTRATION_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::worker {

struct RegistrationOptions {
  std::string coordinator;  // host:port
  std::string address;      // This worker's advertised WorkerService endpoint.
  std::optional<int> rank;  // Pinned rank, or any.
  absl::Duration first_timeout = absl::Seconds(60);
  absl::Duration heartbeat = absl::Seconds(1);
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // Null: insecure.
  std::string cluster_secret;  // Sent on every call (wire/cluster_secret.h).
  std::string shm_host_id;     // Which shared memory it sees; empty: none (shm_file.h).
};

// The worker's registration with its coordinator, kept up for the process's
// life: the first registration is waited for (bounded); after it, a
// heartbeat re-registers, so a restarted coordinator learns the worker again
// and rebuilds the ring without anyone restarting workers.
class Registration {
 public:
  // Registers (retrying until options.first_timeout), then starts the heartbeat.
  static absl::StatusOr<std::unique_ptr<Registration>> Start(RegistrationOptions options);
  ~Registration();
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

 private:
  explicit Registration(RegistrationOptions options);
  absl::Status RegisterOnce();
  void Heartbeat();

  const RegistrationOptions options_;
  const std::string incarnation_;
  std::unique_ptr<worker::v1::CoordinatorControl::Stub> stub_;
  std::string coordinator_id_;  // Last seen; only the heartbeat thread touches it after Start.
  bool connected_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // Guarded by mu_.
  std::thread heartbeat_;
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_REGISTRATION_H_
