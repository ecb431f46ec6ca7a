#ifndef RINGATTN_SERVER_WORKER_WORKER_SERVICE_H_
#define RINGATTN_SERVER_WORKER_WORKER_SERVICE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "kernels/chunk_backend.h"
#include "proto/wire/security.h"
#include "proto/wire/tensor_stream.h"
#include "server/ring/ring_attention.h"
#include "server/ring/store.h"
#include "server/ring/transport.h"
#include "server/worker/call_sequencer.h"
#include "server/worker/region_slice_io.h"
#include "server/worker/request_convert.h"
#include "server/worker/worker_metrics.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::worker {

// One generation of the ring as the coordinator's JoinRing describes it.
struct RingJoin {
  int rank = 0;
  int size = 1;
  uint64_t generation = 0;
  std::string listen_host;  // Where Gloo listens; NCCL picks its own interfaces.
};

// Makes this rank's transport of one ring generation, meeting its peers
// through the coordinator's store: Gloo or NCCL, as the worker chose at start.
using TransportFactory =
    std::function<absl::StatusOr<std::unique_ptr<ring::Transport>>(ring::Store&, const RingJoin&)>;

// Gloo over TCP.
TransportFactory GlooTransportFactory();

// Shared memory between the ring's ranks when they all share this host's
// memory (ring/transports/shm_transport.h); when they do not, Gloo over TCP
// if `fall_back_to_gloo`, else FAILED_PRECONDITION. All ranks decide
// together, so a ring never mixes the two.
TransportFactory SharedMemoryTransportFactory(bool fall_back_to_gloo);

// Well under the default ring timeout (60 s), well over a step's wait in a
// healthy ring, where every rank computes about as much as its peers.
inline constexpr absl::Duration kDefaultRingStallTimeout = absl::Seconds(15);

// One rank's daemon: joins the ring when the coordinator says so, keeps its
// shard and saved forward state per session, and runs ring forward and
// backward calls in the coordinator's order.
class WorkerServiceImpl final : public worker::v1::WorkerService::Service {
 public:
  // `backend` computes the ring steps (CPU or CUDA) and must outlive the
  // service. `store_security`: how JoinRing reaches the coordinator's store
  // (TLS, cluster token); its cluster_secret is also what every call to this
  // service must carry (none gets in without one). `connect`: the ring
  // transport.
  // `ring_stall_timeout`: how long a ring wait may make no progress before
  // the call fails (a peer hung); zero or less: only the call's ring timeout
  // bounds it. `shm_regions`: whether this worker reads and writes clients'
  // shared-memory regions (region slices are refused otherwise).
  WorkerServiceImpl(kernels::ChunkBackend& backend, uint64_t max_call_bytes, WorkerMetrics& metrics,
                    wire::ChannelSecurity store_security = {},
                    TransportFactory connect = GlooTransportFactory(),
                    absl::Duration ring_stall_timeout = kDefaultRingStallTimeout,
                    bool shm_regions = true);

  using Stream = grpc::ServerReaderWriter<worker::v1::ShardResponse, worker::v1::ShardRequest>;

  grpc::Status JoinRing(grpc::ServerContext* context, const worker::v1::JoinRingRequest* request,
                        worker::v1::JoinRingResponse* response) override;
  grpc::Status Forward(grpc::ServerContext* context, Stream* stream) override;
  grpc::Status Backward(grpc::ServerContext* context, Stream* stream) override;
  grpc::Status Release(grpc::ServerContext* context,
                       const worker::v1::WorkerReleaseRequest* request,
                       worker::v1::WorkerReleaseResponse* response) override;

 private:
  // What forward leaves for backward: the shard and its output.
  struct Session {
    // The shard's tensors, taken from the forward's inputs.
    Session(ShardSpec shard, wire::TensorAssembler& inputs);

    ShardSpec spec;
    std::vector<std::byte> q, k, v, out;
    std::vector<int32_t> doc, vision;
    std::vector<uint8_t> padding;
    std::vector<float> lse;
    // On a device backend: the shard, out and lse as the forward left them
    // on the device, so the backward uploads only dout. Freed with the
    // session.
    std::shared_ptr<const ring::ForwardResidue> residue;

    uint64_t bytes() const {
      return q.size() + k.size() + v.size() + out.size() + doc.size() * 4 + vision.size() * 4 +
             padding.size() + lse.size() * 4;
    }
    // The shard as the ring reads it.
    ring::ShardRef Shard() const {
      return {.shape = spec.shape,
              .q = q,
              .k = k,
              .v = v,
              .doc = doc,
              .vision = vision,
              .padding = padding};
    }
  };

  absl::Status Join(const worker::v1::JoinRingRequest& request);
  absl::Status RunForward(grpc::ServerContext& context, Stream& stream);
  absl::Status RunBackward(grpc::ServerContext& context, Stream& stream);
  // Reads a shard stream: its call (checked, then `expect` declares the
  // call's tensors and the outputs it may write into regions, with their
  // sizes), every tensor chunk or region slice, then the commit. An input's
  // slice is read from its region at once; an output's is opened and kept
  // in `region_outputs`. A call whose stream fails once it was committed
  // gives up its turn.
  using Expect = std::function<void(const ShardSpec&, wire::TensorAssembler&,
                                    std::map<std::string, uint64_t>& outputs)>;
  absl::StatusOr<CommittedCall> ReadCall(Stream& stream, wire::TensorAssembler& assembler,
                                         const Expect& expect,
                                         std::map<std::string, RegionSliceIo>& region_outputs);
  // Sends an output tensor back, or writes it into its region.
  absl::Status Answer(Stream& stream, const std::map<std::string, RegionSliceIo>& region_outputs,
                      const std::string& name, const std::string& dtype,
                      const std::vector<int64_t>& shape, std::span<const std::byte> data);
  // Runs `run` in the call's turn of the ring's order, then gives the turn
  // up, whatever happened. If the coordinator cancels the call meanwhile,
  // `transport` (the one `run` uses) is aborted.
  template <typename T>
  absl::StatusOr<T> InTurn(grpc::ServerContext& context,
                           const std::shared_ptr<ring::Transport>& transport, uint64_t epoch,
                           const CommittedCall& call,
                           const std::function<absl::StatusOr<T>()>& run);
  // The transport of the current ring generation, shared with calls in
  // flight so a rebuild cannot pull it from under them.
  std::shared_ptr<ring::Transport> transport();
  // Whether a call of `generation` was numbered in this worker's current
  // ring; if so, the ring's epoch (this worker's count of rings joined) for
  // the sequencer.
  absl::StatusOr<uint64_t> CheckGeneration(uint64_t generation);
  // The ring's view of a committed call, with this worker's stall bound.
  ring::RingCall RingCallFor(const CommittedCall& call, const kernels::LayerConfig& layer) const;
  int rank();
  void PublishLocked();  // Session gauges (requires mu_).

  kernels::ChunkBackend& backend_;
  const uint64_t max_call_bytes_;
  const wire::ChannelSecurity store_security_;
  const TransportFactory connect_;
  const absl::Duration ring_stall_timeout_;
  const bool shm_regions_;
  WorkerMetrics& metrics_;
  CallSequencer sequencer_;
  std::mutex mu_;
  std::shared_ptr<ring::Transport> transport_;  // Guarded by mu_.
  int rank_ = -1;                               // Guarded by mu_.
  uint64_t generation_ = 0;                     // Guarded by mu_.
  std::string coordinator_id_;  // Whose generation numbers these are. Guarded by mu_.
  // Rings joined by this process: unlike generations, never repeats across
  // coordinator restarts. Guarded by mu_.
  uint64_t epoch_ = 0;
  std::map<std::string, std::shared_ptr<Session>> sessions_;  // Guarded by mu_.
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_WORKER_SERVICE_H_
