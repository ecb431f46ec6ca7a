#ifndef RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_
#define RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "attention/v1/attention_service.grpc.pb.h"
#include "server/coordinator/cluster.h"
#include "server/coordinator/coordinator_metrics.h"
#include "server/coordinator/region_table.h"
#include "server/coordinator/ring_call_runner.h"
#include "server/coordinator/session_table.h"

namespace ringattn::coordinator {

struct CoordinatorOptions {
  uint64_t max_call_bytes = uint64_t{1} << 32;       // Tensors of one call, in total.
  uint64_t memory_budget_bytes = uint64_t{8} << 30;  // Session state held, in total.
  absl::Duration session_ttl = absl::Minutes(30);
  absl::Duration ring_timeout = absl::Seconds(60);  // Bound on every ring wait.
  // A Forward or Backward request stream quiet this long is cancelled and
  // its reservation returned; zero: never.
  absl::Duration stream_idle_timeout = absl::Seconds(10);
  // Per client (its token's name, its certificate's name, else its host):
  // sessions open at once, and session state held. 0: no limit of its own.
  int max_sessions_per_client = 0;
  uint64_t max_client_memory_bytes = 0;
  // Shared-memory regions: whether clients may register them, and how many
  // each may hold (idle ones expire after session_ttl).
  bool shm_regions = true;
  int max_regions_per_client = 64;
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
  grpc::Status RegisterRegion(grpc::ServerContext* context,
                              const attention::v1::RegisterRegionRequest* request,
                              attention::v1::RegisterRegionResponse* response) override;
  grpc::Status UnregisterRegion(grpc::ServerContext* context,
                                const attention::v1::UnregisterRegionRequest* request,
                                attention::v1::UnregisterRegionResponse* response) override;
  grpc::Status ListRegions(grpc::ServerContext* context,
                           const attention::v1::ListRegionsRequest* request,
                           attention::v1::ListRegionsResponse* response) override;

 private:
  absl::Status RunForward(grpc::ServerContext& context, ForwardStream& stream);
  absl::Status RunBackward(grpc::ServerContext& context, BackwardStream& stream);
  // Frees the sessions' state on every worker (best effort).
  void ReleaseOnWorkers(const std::vector<std::string>& handles);
  // How a call of `owner` on the ring of `ticket` may use regions: the
  // ranks that see this coordinator's shared memory read and write them.
  CallRegions RegionsFor(const std::string& owner, const Cluster::Ticket& ticket);
  // The header's output references, checked against the call's outputs
  // (`whole`: their names and whole-tensor sizes, in bytes).
  absl::StatusOr<RegionOutputs> ResolveOutputs(
      const std::string& owner,
      const google::protobuf::RepeatedPtrField<attention::v1::TensorRef>& refs,
      const std::vector<std::pair<std::string, uint64_t>>& whole);

  Cluster& cluster_;
  const CoordinatorOptions options_;
  CoordinatorMetrics& metrics_;
  const RingCallRunner::Env ring_env_;
  // Which shared memory this process sees (empty: regions are off).
  const std::string shm_host_id_;
  RegionTable regions_;
  SessionTable sessions_;
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_ATTENTION_SERVICE_H_
