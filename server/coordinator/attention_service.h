#ifndef RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_
#define RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "server/coordinator/cluster.h"
#include "server/coordinator/coordinator_metrics.h"

namespace ringattn::server {

struct CoordinatorOptions {
  uint64_t max_call_bytes = uint64_t{1} << 32;       // Tensors of one call, in total.
  uint64_t memory_budget_bytes = uint64_t{8} << 30;  // Session state held, in total.
  absl::Duration session_ttl = absl::Minutes(30);
  absl::Duration ring_timeout = absl::Seconds(60);  // Bound on every ring wait.
  // Per client (its token's name, its certificate's name, else its host):
  // sessions open at once, and session state held. 0: no limit of its own.
  int max_sessions_per_client = 0;
  uint64_t max_client_memory_bytes = 0;
};

// The public API: pads and shards each call (SPEC §1), dispatches it to
// every worker at once, and streams the reassembled results back.
class AttentionServiceImpl final : public attention::v1::AttentionService::Service {
 public:
  AttentionServiceImpl(Cluster& cluster, CoordinatorOptions options, CoordinatorMetrics& metrics);

  grpc::Status Forward(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<attention::v1::ForwardResponse,
                                                attention::v1::ForwardRequest>* stream) override;
  grpc::Status Backward(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<attention::v1::BackwardResponse,
                                                 attention::v1::BackwardRequest>* stream) override;
  grpc::Status Release(grpc::ServerContext* context, const attention::v1::ReleaseRequest* request,
                       attention::v1::ReleaseResponse* response) override;
  grpc::Status ClusterStatus(grpc::ServerContext* context,
                             const attention::v1::ClusterStatusRequest* request,
                             attention::v1::ClusterStatusResponse* response) override;

 private:
  struct Session {
    attention::v1::ForwardHeader header;
    int64_t padded_len = 0;
    uint64_t generation = 0;
    bool batch_has_vision = false;
    uint64_t bytes = 0;  // Held on the workers for backward.
    absl::Time expires;
    std::string client;  // Who opened it (per-client limits).
  };
  struct ClientUsage {
    int sessions = 0;  // Reserved or open.
    uint64_t bytes = 0;
  };

  // Drops expired sessions from the table (requires mu_) and returns their
  // handles, for ReleaseOnWorkers once mu_ is released.
  std::vector<std::string> DropExpired();
  // Frees the sessions' state on every worker (best effort).
  void ReleaseOnWorkers(const std::vector<std::string>& handles);
  // Un-reserves a session's bytes (requires mu_) and updates the gauges.
  void ForgetLocked(uint64_t bytes, const std::string& client);
  void PublishLocked();
  // A failed ring call's status for the client: names the ranks that are
  // down, and marks the ring for rebuilding when the failure broke it.
  absl::Status RingCallFailed(uint64_t generation, const absl::Status& status);

  Cluster& cluster_;
  const CoordinatorOptions options_;
  CoordinatorMetrics& metrics_;
  std::mutex mu_;
  std::map<std::string, Session> sessions_;  // Guarded by mu_.
  uint64_t bytes_held_ = 0;                  // Guarded by mu_.
  std::map<std::string, ClientUsage> clients_;  // Guarded by mu_.
  uint64_t next_session_ = 0;                // Guarded by mu_.
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_
