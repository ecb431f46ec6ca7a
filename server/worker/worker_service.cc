#include "server/worker/worker_service.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "kernels/status_macros.h"
#include "proto/wire/cluster_secret.h"
#include "proto/wire/dtype.h"
#include "proto/wire/grpc_status.h"
#include "proto/wire/tensor_stream.h"
#include "server/common/finite_scan.h"
#include "server/ring/ring_attention.h"
#include "server/ring/transports/gloo_transport.h"
#include "server/ring/transports/shm_transport.h"
#include "server/worker/grpc_store.h"

namespace ringattn::worker {
namespace {

using worker::v1::ShardRequest;
using worker::v1::ShardResponse;
using Stream = WorkerServiceImpl::Stream;

bool Send(Stream& stream, const std::string& name, const std::string& dtype,
          const std::vector<int64_t>& shape, std::span<const std::byte> data,
          prometheus::Counter& sent) {
  bool ok = true;
  wire::SplitTensor(name, dtype, shape, data, [&](attention::v1::TensorChunk& chunk) {
    sent.Increment(static_cast<double>(chunk.data().size()));
    ShardResponse resp;
    *resp.mutable_chunk() = std::move(chunk);
    ok = stream.Write(resp);
    return ok;
  });
  return ok;
}

// What a forward's shard stream carries: q [B, H, L, D], k and v
// [B, Hkv, L, D], the per-token metadata [B, L]; a backward's, dout.
// Outputs a region may take: out [B, H, L, D] in the input dtype and lse
// [B, H, L] FP32; dq, dk, dv FP32.
void ExpectForwardShard(const ShardSpec& c, wire::TensorAssembler& a,
                        std::map<std::string, uint64_t>& outputs) {
  const std::string dtype = wire::DTypeName(c.shape.dtype);
  const auto tokens = static_cast<uint64_t>(c.shape.batch * c.shape.heads * c.shape.q_len);
  outputs["out"] = tokens * c.shape.head_dim * kernels::DTypeSize(c.shape.dtype);
  outputs["lse"] = tokens * 4;
  a.Expect("q", dtype, QueryDims(c.shape), true);
  a.Expect("k", dtype, KvDims(c.shape), true);
  a.Expect("v", dtype, KvDims(c.shape), true);
  a.Expect("doc_ids", "INT32", TokenDims(c.shape), true);
  a.Expect("vision_groups", "INT32", TokenDims(c.shape), true);
  a.Expect("padding_mask", "BOOL", TokenDims(c.shape), true);
}
void ExpectBackwardShard(const ShardSpec& c, wire::TensorAssembler& a,
                         std::map<std::string, uint64_t>& outputs) {
  const auto& s = c.shape;
  outputs["dq"] = static_cast<uint64_t>(s.batch * s.heads * s.q_len * s.head_dim) * 4;
  outputs["dk"] = static_cast<uint64_t>(s.batch * s.kv_heads * s.kv_len * s.head_dim) * 4;
  outputs["dv"] = outputs["dk"];
  a.Expect("dout", wire::DTypeName(c.shape.dtype), QueryDims(c.shape), true);
}

// The inputs that must be finite (see server/common/finite_scan.h).
bool IsFloatInput(const std::string& name) {
  return name == "q" || name == "k" || name == "v" || name == "dout";
}

// The whole tensor a region slice is cut from, [B, heads, S, D], for naming
// an element of it (at least 1 each, whatever the slice claims).
std::vector<int64_t> RegionTensorDims(const worker::v1::RegionSlice& slice,
                                      const kernels::AttentionShape& shape) {
  const auto at_least_1 = [](uint64_t n) { return static_cast<int64_t>(std::max<uint64_t>(n, 1)); };
  const auto batch = static_cast<uint64_t>(std::max<int64_t>(shape.batch, 1));
  const auto dim = static_cast<uint64_t>(std::max<int64_t>(shape.head_dim, 1));
  return {at_least_1(batch), at_least_1(slice.rows() / batch),
          at_least_1(slice.row_bytes() / (dim * kernels::DTypeSize(shape.dtype))), at_least_1(dim)};
}

void SendMetrics(Stream& stream, int rank, const ring::RingStats& stats) {
  ShardResponse resp;
  attention::v1::RankMetrics* m = resp.mutable_metrics();
  m->set_rank(rank);
  m->set_compute_seconds(stats.compute_seconds);
  m->set_comm_wait_seconds(stats.wait_seconds);
  m->set_total_seconds(stats.total_seconds);
  m->set_bytes_sent(stats.bytes_sent);
  m->set_bytes_received(stats.bytes_received);
  for (const ring::StepStats& st : stats.steps) {
    attention::v1::StepMetrics* step = m->add_steps();
    step->set_step(st.step);
    step->set_chunk_owner(st.chunk_owner);
    step->set_computed(st.computed);
    step->set_compute_seconds(st.compute_seconds);
    step->set_comm_wait_seconds(st.wait_seconds);
    step->set_bytes_sent(st.bytes_sent);
    step->set_bytes_received(st.bytes_received);
  }
  stream.Write(resp);
}

// While a ring call runs (or waits for its turn), aborts its transport if
// the coordinator cancels the call: it does so only when the call failed on
// another rank or a rank of it went down, and then the ring is rebuilt. The
// abort wakes this rank's waits and closes its connections, so that its
// peers stop waiting on it too. The synchronous server has no cancellation
// callback, hence the poll.
class AbortOnCancel {
 public:
  AbortOnCancel(grpc::ServerContext& context, std::shared_ptr<ring::Transport> transport)
      : thread_([this, &context, t = std::move(transport)] {
          std::unique_lock<std::mutex> lock(mu_);
          while (!done_) {
            if (context.IsCancelled()) {
              if (t) t->Abort();
              return;
            }
            cv_.wait_for(lock, std::chrono::milliseconds(20));
          }
        }) {}
  ~AbortOnCancel() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  AbortOnCancel(const AbortOnCancel&) = delete;
  AbortOnCancel& operator=(const AbortOnCancel&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;   // Guarded by mu_.
  std::thread thread_;  // Last: starts once the rest is built.
};

}  // namespace

TransportFactory GlooTransportFactory() {
  return [](ring::Store& store, const RingJoin& join) {
    ring::GlooOptions options;
    options.rank = join.rank;
    options.size = join.size;
    options.generation = join.generation;
    options.hostname = join.listen_host.empty() ? "127.0.0.1" : join.listen_host;
    return ring::ConnectGloo(store, options);
  };
}

TransportFactory SharedMemoryTransportFactory(bool fall_back_to_gloo) {
  return [fall_back_to_gloo](
             ring::Store& store,
             const RingJoin& join) -> absl::StatusOr<std::unique_ptr<ring::Transport>> {
    ring::ShmOptions options;
    options.rank = join.rank;
    options.size = join.size;
    options.generation = join.generation;
    // One ring buffer per (sender, receiver) in each inbox: smaller ones for
    // larger rings keep /dev/shm use near 64 MiB in all.
    options.channel_bytes =
        std::clamp<size_t>((size_t{64} << 20) / static_cast<size_t>(join.size * join.size),
                           size_t{256} << 10, size_t{4} << 20);
    absl::StatusOr<std::unique_ptr<ring::Transport>> t = ring::ConnectShm(store, options);
    if (t.ok() || !fall_back_to_gloo || !absl::IsFailedPrecondition(t.status())) return t;
    std::fprintf(stderr, "worker: ring generation %llu over Gloo TCP: %s\n",
                 static_cast<unsigned long long>(join.generation),
                 std::string(t.status().message()).c_str());
    return GlooTransportFactory()(store, join);
  };
}

WorkerServiceImpl::Session::Session(ShardSpec shard, wire::TensorAssembler& inputs)
    : spec(std::move(shard)),
      q(inputs.Take("q")),
      k(inputs.Take("k")),
      v(inputs.Take("v")),
      doc(wire::BytesAs<int32_t>(inputs.Take("doc_ids"))),
      vision(wire::BytesAs<int32_t>(inputs.Take("vision_groups"))),
      padding(wire::BytesAs<uint8_t>(inputs.Take("padding_mask"))) {}

WorkerServiceImpl::WorkerServiceImpl(kernels::ChunkBackend& backend, uint64_t max_call_bytes,
                                     WorkerMetrics& metrics, wire::ChannelSecurity store_security,
                                     TransportFactory connect, absl::Duration ring_stall_timeout,
                                     bool shm_regions)
    : backend_(backend),
      max_call_bytes_(max_call_bytes),
      store_security_(std::move(store_security)),
      connect_(std::move(connect)),
      ring_stall_timeout_(ring_stall_timeout > absl::ZeroDuration() ? ring_stall_timeout
                                                                    : absl::InfiniteDuration()),
      shm_regions_(shm_regions),
      metrics_(metrics) {}

void WorkerServiceImpl::PublishLocked() {
  uint64_t bytes = 0;
  for (const auto& [handle, session] : sessions_) bytes += session->bytes();
  metrics_.service.sessions_open.Set(static_cast<double>(sessions_.size()));
  metrics_.service.memory_held_bytes.Set(static_cast<double>(bytes));
}

absl::StatusOr<uint64_t> WorkerServiceImpl::CheckGeneration(uint64_t generation) {
  std::lock_guard<std::mutex> lock(mu_);
  if (generation != generation_) {
    return absl::UnavailableError(absl::StrCat("ring call of generation ", generation,
                                               " reached a worker in generation ", generation_,
                                               "; the ring was rebuilt"));
  }
  return epoch_;
}

std::shared_ptr<ring::Transport> WorkerServiceImpl::transport() {
  std::lock_guard<std::mutex> lock(mu_);
  return transport_;
}

ring::RingCall WorkerServiceImpl::RingCallFor(const CommittedCall& call,
                                              const kernels::LayerConfig& layer) const {
  ring::RingCall rc = RingCallOf(call, layer);
  rc.stall_timeout = ring_stall_timeout_;
  return rc;
}

int WorkerServiceImpl::rank() {
  std::lock_guard<std::mutex> lock(mu_);
  return rank_;
}

absl::StatusOr<CommittedCall> WorkerServiceImpl::ReadCall(
    Stream& stream, wire::TensorAssembler& assembler, const Expect& expect,
    std::map<std::string, RegionSliceIo>& region_outputs) {
  ShardRequest req;
  if (!stream.Read(&req) || !req.has_call()) {
    return absl::InvalidArgumentError("a shard stream must start with its call");
  }
  CommittedCall call;
  RINGATTN_ASSIGN_OR_RETURN(call.spec, ShardSpecFromCall(req.call()));
  std::map<std::string, uint64_t> outputs;
  expect(call.spec, assembler, outputs);
  // An input's slice is copied out of the region now, as a streamed one
  // would be received: what the client does to the region once the call
  // was committed cannot change the ring's inputs.
  auto add_region = [&](const worker::v1::RegionSlice& slice) -> absl::Status {
    if (!shm_regions_) {
      return absl::FailedPreconditionError("this worker does not read shared-memory regions");
    }
    if (auto out = outputs.find(slice.name()); out != outputs.end()) {
      if (region_outputs.contains(slice.name())) {
        return absl::InvalidArgumentError(absl::StrCat(slice.name(), " has two regions"));
      }
      RINGATTN_ASSIGN_OR_RETURN(RegionSliceIo io, RegionSliceIo::Open(slice, out->second));
      region_outputs.emplace(slice.name(), std::move(io));
      return absl::OkStatus();
    }
    const std::optional<uint64_t> bytes = assembler.ExpectedBytes(slice.name());
    if (!bytes) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", slice.name(), "'"));
    }
    RINGATTN_ASSIGN_OR_RETURN(const RegionSliceIo io, RegionSliceIo::Open(slice, *bytes));
    if (!IsFloatInput(slice.name())) {
      RINGATTN_ASSIGN_OR_RETURN(std::vector<std::byte> data, io.Read());
      return assembler.AddWhole(slice.name(), std::move(data));
    }
    // No other process saw these bytes: they are checked here, as the
    // coordinator checks what streams through it.
    const kernels::DType dtype = call.spec.shape.dtype;
    const std::vector<int64_t> shape = RegionTensorDims(slice, call.spec.shape);
    const auto esize = kernels::DTypeSize(dtype);
    RINGATTN_ASSIGN_OR_RETURN(std::vector<std::byte> data,
                              io.Read([&](uint64_t offset, std::span<const std::byte> piece) {
                                return server::CheckFinite(slice.name(), dtype, shape,
                                                           static_cast<int64_t>(offset / esize),
                                                           piece);
                              }));
    return assembler.AddWhole(slice.name(), std::move(data));
  };
  prometheus::Counter& received = metrics_.service.received_bytes(server::Channel::kShard);
  bool committed = false, sealed = false;
  while (!committed && stream.Read(&req)) {
    if (req.has_commit()) {
      committed = true;
      call.sequence = req.commit().sequence();
      call.batch_has_vision = req.commit().batch_has_vision();
    } else if (sealed) {
      return absl::InvalidArgumentError("only the commit follows the seal");
    } else if (req.has_seal()) {
      // Refused now, the call is withdrawn from every rank before it runs.
      RINGATTN_RETURN_IF_ERROR(assembler.Finish());
      sealed = true;
      ShardResponse ready;
      ready.mutable_ready();
      if (!stream.Write(ready)) return absl::CancelledError("the coordinator left at the seal");
    } else if (req.has_chunk()) {
      received.Increment(static_cast<double>(req.chunk().data().size()));
      RINGATTN_RETURN_IF_ERROR(assembler.Add(req.chunk()));
    } else if (req.has_region()) {
      RINGATTN_RETURN_IF_ERROR(add_region(req.region()));
    } else {
      return absl::InvalidArgumentError("only tensor chunks and the commit follow the call");
    }
  }
  // A call without its commit has no place in the order yet: nothing to give
  // up. One that was committed and then failed (bad chunks) gives up its turn.
  if (!committed) {
    return absl::CancelledError(absl::StrCat("the ring call of session '", call.spec.session,
                                             "' was withdrawn before it started"));
  }
  if (absl::Status s = sealed ? absl::OkStatus() : assembler.Finish(); !s.ok()) {
    if (absl::StatusOr<uint64_t> epoch = CheckGeneration(call.spec.generation);
        epoch.ok() && call.sequence != 0) {
      sequencer_.Done(*epoch, call.sequence);
    }
    return s;
  }
  return call;
}

absl::Status WorkerServiceImpl::Answer(Stream& stream,
                                       const std::map<std::string, RegionSliceIo>& region_outputs,
                                       const std::string& name, const std::string& dtype,
                                       const std::vector<int64_t>& shape,
                                       std::span<const std::byte> data) {
  if (auto it = region_outputs.find(name); it != region_outputs.end()) {
    return it->second.Write(data);
  }
  Send(stream, name, dtype, shape, data, metrics_.service.sent_bytes(server::Channel::kShard));
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<T> WorkerServiceImpl::InTurn(grpc::ServerContext& context,
                                            const std::shared_ptr<ring::Transport>& transport,
                                            uint64_t epoch, const CommittedCall& call,
                                            const std::function<absl::StatusOr<T>()>& run) {
  const AbortOnCancel abort_on_cancel(context, transport);
  RINGATTN_RETURN_IF_ERROR(sequencer_.WaitTurn(epoch, call.sequence, call.spec.timeout));
  absl::StatusOr<T> result = run();
  sequencer_.Done(epoch, call.sequence);
  return result;
}

grpc::Status WorkerServiceImpl::JoinRing(grpc::ServerContext* context,
                                         const worker::v1::JoinRingRequest* request,
                                         worker::v1::JoinRingResponse* /*response*/) {
  if (absl::Status s = wire::CheckClusterSecret(*context, store_security_.cluster_secret);
      !s.ok()) {
    return wire::ToGrpc(s);
  }
  return wire::ToGrpc(Join(*request));
}

absl::Status WorkerServiceImpl::Join(const worker::v1::JoinRingRequest& request) {
  RINGATTN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                            wire::CreateChannel(request.store_address(), store_security_));
  auto stub = std::shared_ptr<worker::v1::CoordinatorControl::StubInterface>(
      worker::v1::CoordinatorControl::NewStub(channel));
  GrpcStore store(stub);
  const RingJoin join{request.rank(), request.cp(), request.generation(), request.listen_host()};
  RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<ring::Transport> t, connect_(store, join));
  // The replaced transport is closed after the lock is released: closing an
  // NCCL communicator can take a while.
  std::shared_ptr<ring::Transport> replaced;
  std::lock_guard<std::mutex> lock(mu_);
  // A join called off and retried can finish after its successor: the ring
  // of the newest generation wins.
  if (request.coordinator_id() == coordinator_id_ && request.generation() < generation_) {
    return absl::AbortedError(
        absl::StrCat("generation ", request.generation(), " was superseded by ", generation_));
  }
  replaced = std::exchange(transport_, std::move(t));
  rank_ = request.rank();
  generation_ = request.generation();
  coordinator_id_ = request.coordinator_id();
  sessions_.clear();  // A new ring: state of the old one is gone.
  sequencer_.Reset(++epoch_);
  PublishLocked();
  metrics_.ring_rank.Set(rank_);
  metrics_.service.ring_generation.Set(static_cast<double>(generation_));
  std::fprintf(stderr, "worker: joined ring generation %llu as rank %d of %d\n",
               static_cast<unsigned long long>(generation_), rank_, request.cp());
  return absl::OkStatus();
}

grpc::Status WorkerServiceImpl::Forward(grpc::ServerContext* context, Stream* stream) {
  return wire::ToGrpc(RunForward(*context, *stream));
}

absl::Status WorkerServiceImpl::RunForward(grpc::ServerContext& context, Stream& stream) {
  RINGATTN_RETURN_IF_ERROR(wire::CheckClusterSecret(context, store_security_.cluster_secret));
  wire::TensorAssembler assembler(max_call_bytes_);
  std::map<std::string, RegionSliceIo> region_outputs;
  RINGATTN_ASSIGN_OR_RETURN(const CommittedCall call,
                            ReadCall(stream, assembler, ExpectForwardShard, region_outputs));
  const ShardSpec& spec = call.spec;
  RINGATTN_ASSIGN_OR_RETURN(const uint64_t epoch, CheckGeneration(spec.generation));
  auto session = std::make_shared<Session>(spec, assembler);
  const std::shared_ptr<ring::Transport> t = transport();
  RINGATTN_ASSIGN_OR_RETURN(
      ring::RingForwardResult r,
      InTurn<ring::RingForwardResult>(
          context, t, epoch, call, [&]() -> absl::StatusOr<ring::RingForwardResult> {
            if (!t) return absl::UnavailableError("worker is not in a ring");
            // A session admitted here must also fit its backward.
            RINGATTN_RETURN_IF_ERROR(backend_.Reserve(spec.shape, /*backward=*/true));
            return ring::RingForward(*t, backend_, session->Shard(), RingCallFor(call, spec.layer),
                                     /*keep_for_backward=*/true);
          }));
  metrics_.RecordRingCall(server::Op::kForward, r.stats);
  metrics_.RecordBackendMemory(backend_.memory());
  RINGATTN_RETURN_IF_ERROR(Answer(stream, region_outputs, "out", wire::DTypeName(spec.shape.dtype),
                                  QueryDims(spec.shape), r.out));
  RINGATTN_RETURN_IF_ERROR(Answer(stream, region_outputs, "lse", "FP32",
                                  {spec.shape.batch, spec.shape.heads, spec.shape.q_len},
                                  std::as_bytes(std::span(r.lse))));
  int rank;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rank = rank_;
    session->out = std::move(r.out);
    session->lse = std::move(r.lse);
    session->residue = std::move(r.residue);
    // Only while the ring that made it stands: a rebuild cleared the table.
    if (epoch_ == epoch) sessions_[spec.session] = session;
    PublishLocked();
  }
  SendMetrics(stream, rank, r.stats);
  return absl::OkStatus();
}

grpc::Status WorkerServiceImpl::Backward(grpc::ServerContext* context, Stream* stream) {
  return wire::ToGrpc(RunBackward(*context, *stream));
}

absl::Status WorkerServiceImpl::RunBackward(grpc::ServerContext& context, Stream& stream) {
  RINGATTN_RETURN_IF_ERROR(wire::CheckClusterSecret(context, store_security_.cluster_secret));
  wire::TensorAssembler assembler(max_call_bytes_);
  std::map<std::string, RegionSliceIo> region_outputs;
  RINGATTN_ASSIGN_OR_RETURN(const CommittedCall call,
                            ReadCall(stream, assembler, ExpectBackwardShard, region_outputs));
  RINGATTN_ASSIGN_OR_RETURN(const uint64_t epoch, CheckGeneration(call.spec.generation));
  std::shared_ptr<Session> session;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(call.spec.session);
    if (it != sessions_.end()) session = it->second;
  }
  std::shared_ptr<ring::Transport> t = transport();
  // The turn is taken even for a call that will fail, so later calls still run.
  RINGATTN_ASSIGN_OR_RETURN(
      ring::RingBackwardResult r,
      InTurn<ring::RingBackwardResult>(
          context, t, epoch, call, [&]() -> absl::StatusOr<ring::RingBackwardResult> {
            if (!session || !t) {
              return absl::NotFoundError(
                  absl::StrCat("session '", call.spec.session, "' is not on this worker"));
            }
            const std::vector<std::byte> dout = assembler.Take("dout");
            RINGATTN_RETURN_IF_ERROR(backend_.Reserve(session->spec.shape, /*backward=*/true));
            return ring::RingBackward(*t, backend_, session->Shard(), session->out, dout,
                                      session->lse, RingCallFor(call, session->spec.layer),
                                      session->residue.get());
          }));
  metrics_.RecordRingCall(server::Op::kBackward, r.stats);
  metrics_.RecordBackendMemory(backend_.memory());
  const kernels::AttentionShape& fs = session->spec.shape;  // As the forward ran.
  RINGATTN_RETURN_IF_ERROR(
      Answer(stream, region_outputs, "dq", "FP32", QueryDims(fs), std::as_bytes(std::span(r.dq))));
  RINGATTN_RETURN_IF_ERROR(
      Answer(stream, region_outputs, "dk", "FP32", KvDims(fs), std::as_bytes(std::span(r.dk))));
  RINGATTN_RETURN_IF_ERROR(
      Answer(stream, region_outputs, "dv", "FP32", KvDims(fs), std::as_bytes(std::span(r.dv))));
  SendMetrics(stream, rank(), r.stats);
  return absl::OkStatus();
}

grpc::Status WorkerServiceImpl::Release(grpc::ServerContext* context,
                                        const worker::v1::WorkerReleaseRequest* request,
                                        worker::v1::WorkerReleaseResponse* /*response*/) {
  if (absl::Status s = wire::CheckClusterSecret(*context, store_security_.cluster_secret);
      !s.ok()) {
    return wire::ToGrpc(s);
  }
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.erase(request->session());
  PublishLocked();
  return grpc::Status::OK;
}

}  // namespace ringattn::worker
