#ifndef RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_
#define RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "server/coordinator/cluster.h"
#include "server/coordinator/coordinator_metrics.h"
#include "server/coordinator/ring_call_runner.h"
#include "server/coordinator/session_table.h"

namespace ringattn::coordinator {

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
// every worker at once, and streams the reassembled results back. Each
// handler converts its request once (request_convert.h), runs the call in
// absl::Status, and converts the outcome to a gRPC status at the end.
class AttentionServiceImpl final : public attention::v1::AttentionService::Service {
 public:
  AttentionServiceImpl(Cluster& cluster, CoordinatorOptions options, CoordinatorMetrics& metrics);

  using ForwardStream =
      grpc::ServerReaderWriter<attention::v1::ForwardResponse, attention::v1::ForwardRequest>;
  using BackwardStream =
      grpc::ServerReaderWriter<attention::v1::BackwardResponse, attention::v1::BackwardRequest>;

  grpc::Status Forward(grpc::ServerContext* context, ForwardStream* stream) override;
  grpc::Status Backward(grpc::ServerContext* context, BackwardStream* stream) override;
  grpc::Status Release(grpc::ServerContext* context, const attention::v1::ReleaseRequest* request,
                       attention::v1::ReleaseResponse* response) override;
  grpc::Status PrepareBatch(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<attention::v1::PrepareBatchResponse,
                               attention::v1::PrepareBatchRequest>* stream) override;
  grpc::Status ClusterStatus(grpc::ServerContext* context,
                             const attention::v1::ClusterStatusRequest* request,
                             attention::v1::ClusterStatusResponse* response) override;

 private:
  absl::Status RunForward(grpc::ServerContext& context, ForwardStream& stream);
  absl::Status RunBackward(grpc::ServerContext& context, BackwardStream& stream);
  // Frees the sessions' state on every worker (best effort).
  void ReleaseOnWorkers(const std::vector<std::string>& handles);

  Cluster& cluster_;
  const CoordinatorOptions options_;
  CoordinatorMetrics& metrics_;
  const RingCallRunner::Env ring_env_;
  SessionTable sessions_;
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_
