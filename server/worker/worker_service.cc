#include "server/worker/worker_service.h"

#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "kernels/status_macros.h"
#include "proto/wire/grpc_status.h"
#include "proto/wire/tensor_stream.h"
#include "server/common/grpc_store.h"
#include "server/common/layer_config.h"
#include "server/ring/gloo_transport.h"
#include "server/ring/ring_attention.h"

namespace ringattn::server {
namespace {

using worker::v1::ShardCall;
using worker::v1::ShardRequest;
using worker::v1::ShardResponse;
using Stream = grpc::ServerReaderWriter<ShardResponse, ShardRequest>;

absl::Status CheckCall(const ShardCall& c) {
  if (c.batch() < 1 || c.heads() < 1 || c.kv_heads() < 1 || c.shard_len() < 1 || c.head_dim() < 1 ||
      c.batch() > (1 << 20) || c.heads() > 4096 || c.kv_heads() > 4096 ||
      c.shard_len() > (int64_t{1} << 32) || c.head_dim() > 4096) {
    return absl::InvalidArgumentError("shard call sizes out of range");
  }
  if (wire::WireDTypeSize(c.dtype()) != 2 && c.dtype() != "FP32") {
    return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", c.dtype(), "'"));
  }
  return absl::OkStatus();
}

// Reads the call message, then every tensor chunk, then the commit. `seen`
// gets the call as soon as it is read, so a caller can give up its turn when
// the rest never comes.
absl::StatusOr<ShardCall> ReadCall(Stream* stream, wire::TensorAssembler& assembler,
                                   const std::function<void(const ShardCall&)>& expect,
                                   std::optional<ShardCall>& seen, prometheus::Counter& received) {
  ShardRequest req;
  if (!stream->Read(&req) || !req.has_call()) {
    return absl::InvalidArgumentError("a shard stream must start with its call");
  }
  seen = req.call();
  seen->set_sequence(0);  // Given at commit.
  const ShardCall& call = *seen;
  RINGATTN_RETURN_IF_ERROR(CheckCall(call));
  expect(call);
  bool committed = false;
  while (!committed && stream->Read(&req)) {
    if (req.has_commit()) {
      committed = true;
      seen->set_sequence(req.commit().sequence());
      seen->set_batch_has_vision(req.commit().batch_has_vision());
    } else if (req.has_chunk()) {
      received.Increment(static_cast<double>(req.chunk().data().size()));
      RINGATTN_RETURN_IF_ERROR(assembler.Add(req.chunk()));
    } else {
      return absl::InvalidArgumentError("only tensor chunks and the commit follow the call");
    }
  }
  if (!committed) {
    return absl::CancelledError(absl::StrCat("the ring call of session '", call.session(),
                                             "' was withdrawn before it started"));
  }
  RINGATTN_RETURN_IF_ERROR(assembler.Finish());
  return *seen;
}

ring::RingCall RingCallOf(const ShardCall& call, const kernels::LayerConfig& layer) {
  ring::RingCall rc;
  rc.layer = layer;
  rc.batch_has_vision = call.batch_has_vision();
  rc.sequence = call.sequence();
  rc.generation = call.generation();
  rc.timeout = absl::Seconds(call.timeout_seconds() > 0 ? call.timeout_seconds() : 60);
  return rc;
}

bool Send(Stream* stream, const std::string& name, const std::string& dtype,
          const std::vector<int64_t>& shape, std::span<const std::byte> data,
          prometheus::Counter& sent) {
  bool ok = true;
  wire::SplitTensor(name, dtype, shape, data, [&](attention::v1::TensorChunk& chunk) {
    sent.Increment(static_cast<double>(chunk.data().size()));
    ShardResponse resp;
    *resp.mutable_chunk() = std::move(chunk);
    ok = stream->Write(resp);
    return ok;
  });
  return ok;
}

void SendMetrics(Stream* stream, int rank, const ring::RingStats& stats) {
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
  stream->Write(resp);
}

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

WorkerServiceImpl::WorkerServiceImpl(kernels::ChunkBackend& backend, uint64_t max_call_bytes,
                                     WorkerMetrics& metrics, wire::ChannelSecurity store_security,
                                     TransportFactory connect)
    : backend_(backend),
      max_call_bytes_(max_call_bytes),
      store_security_(std::move(store_security)),
      connect_(std::move(connect)),
      metrics_(metrics) {}

void WorkerServiceImpl::PublishLocked() {
  uint64_t bytes = 0;
  for (const auto& [handle, session] : sessions_) bytes += session->bytes();
  metrics_.service.sessions_open.Set(static_cast<double>(sessions_.size()));
  metrics_.service.memory_held_bytes.Set(static_cast<double>(bytes));
}

absl::StatusOr<uint64_t> WorkerServiceImpl::CheckGeneration(const ShardCall& call) {
  std::lock_guard<std::mutex> lock(mu_);
  if (call.generation() != generation_) {
    return absl::UnavailableError(absl::StrCat("ring call of generation ", call.generation(),
                                               " reached a worker in generation ", generation_,
                                               "; the ring was rebuilt"));
  }
  return epoch_;
}

grpc::Status WorkerServiceImpl::Withdrawn(const std::optional<ShardCall>& seen,
                                          const absl::Status& status) {
  // A call without its commit has no place in the order yet: nothing to give
  // up. One that was committed and then failed (bad chunks) gives up its turn.
  if (seen && seen->sequence() != 0) {
    if (absl::StatusOr<uint64_t> epoch = CheckGeneration(*seen); epoch.ok()) {
      sequencer_.Done(*epoch, seen->sequence());
    }
  }
  return wire::ToGrpc(status);
}

std::shared_ptr<ring::Transport> WorkerServiceImpl::transport() {
  std::lock_guard<std::mutex> lock(mu_);
  return transport_;
}

grpc::Status WorkerServiceImpl::JoinRing(grpc::ServerContext* /*context*/,
                                         const worker::v1::JoinRingRequest* request,
                                         worker::v1::JoinRingResponse* /*response*/) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      wire::CreateChannel(request->store_address(), store_security_);
  if (!channel.ok()) return wire::ToGrpc(channel.status());
  auto stub = std::shared_ptr<worker::v1::CoordinatorControl::StubInterface>(
      worker::v1::CoordinatorControl::NewStub(*channel));
  GrpcStore store(stub);
  const RingJoin join{request->rank(), request->cp(), request->generation(),
                      request->listen_host()};
  absl::StatusOr<std::unique_ptr<ring::Transport>> t = connect_(store, join);
  if (!t.ok()) return wire::ToGrpc(t.status());
  // The replaced transport is closed after the lock is released: closing an
  // NCCL communicator can take a while.
  std::shared_ptr<ring::Transport> replaced;
  std::lock_guard<std::mutex> lock(mu_);
  // A join called off and retried can finish after its successor: the ring
  // of the newest generation wins.
  if (request->coordinator_id() == coordinator_id_ && request->generation() < generation_) {
    return grpc::Status(
        grpc::StatusCode::ABORTED,
        absl::StrCat("generation ", request->generation(), " was superseded by ", generation_));
  }
  replaced = std::exchange(transport_, std::move(*t));
  rank_ = request->rank();
  generation_ = request->generation();
  coordinator_id_ = request->coordinator_id();
  sessions_.clear();  // A new ring: state of the old one is gone.
  sequencer_.Reset(++epoch_);
  PublishLocked();
  metrics_.ring_rank.Set(rank_);
  metrics_.service.ring_generation.Set(static_cast<double>(generation_));
  std::fprintf(stderr, "worker: joined ring generation %llu as rank %d of %d\n",
               static_cast<unsigned long long>(generation_), rank_, request->cp());
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Forward(grpc::ServerContext* /*context*/, Stream* stream) {
  wire::TensorAssembler assembler(max_call_bytes_);
  auto session = std::make_shared<Session>();
  std::optional<ShardCall> seen;
  absl::StatusOr<ShardCall> call = ReadCall(
      stream, assembler,
      [&](const ShardCall& c) {
        const std::vector<int64_t> q = {c.batch(), c.heads(), c.shard_len(), c.head_dim()};
        const std::vector<int64_t> kv = {c.batch(), c.kv_heads(), c.shard_len(), c.head_dim()};
        const std::vector<int64_t> tokens = {c.batch(), c.shard_len()};
        assembler.Expect("q", c.dtype(), q, true);
        assembler.Expect("k", c.dtype(), kv, true);
        assembler.Expect("v", c.dtype(), kv, true);
        assembler.Expect("doc_ids", "INT32", tokens, true);
        assembler.Expect("vision_groups", "INT32", tokens, true);
        assembler.Expect("padding_mask", "BOOL", tokens, true);
      },
      seen, metrics_.service.received_bytes(Channel::kShard));
  if (!call.ok()) return Withdrawn(seen, call.status());
  absl::StatusOr<uint64_t> epoch = CheckGeneration(*call);
  if (!epoch.ok()) return wire::ToGrpc(epoch.status());
  absl::StatusOr<kernels::LayerConfig> layer = LayerFromProto(call->layer(), call->head_dim());
  if (!layer.ok()) return wire::ToGrpc(layer.status());
  session->call = *call;
  session->q = assembler.Take("q");
  session->k = assembler.Take("k");
  session->v = assembler.Take("v");
  session->doc = wire::BytesAs<int32_t>(assembler.Take("doc_ids"));
  session->vision = wire::BytesAs<int32_t>(assembler.Take("vision_groups"));
  session->padding = wire::BytesAs<uint8_t>(assembler.Take("padding_mask"));

  const ring::RingCall rc = RingCallOf(*call, *layer);
  if (absl::Status s = sequencer_.WaitTurn(*epoch, call->sequence(), rc.timeout); !s.ok()) {
    return wire::ToGrpc(s);
  }
  std::shared_ptr<ring::Transport> t = transport();
  if (!t) {
    sequencer_.Done(*epoch, call->sequence());
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker is not in a ring");
  }
  ring::ShardRef shard{DTypeFromWire(call->dtype()),
                       call->batch(),
                       call->heads(),
                       call->kv_heads(),
                       call->shard_len(),
                       call->head_dim(),
                       session->q,
                       session->k,
                       session->v,
                       session->doc,
                       session->vision,
                       session->padding};
  absl::StatusOr<ring::RingForwardResult> r = ring::RingForward(*t, backend_, shard, rc);
  sequencer_.Done(*epoch, call->sequence());
  if (!r.ok()) return wire::ToGrpc(r.status());
  metrics_.RecordRingCall(Op::kForward, r->stats);

  const std::vector<int64_t> q_shape = {call->batch(), call->heads(), call->shard_len(),
                                        call->head_dim()};
  const std::vector<int64_t> lse_shape = {call->batch(), call->heads(), call->shard_len()};
  prometheus::Counter& sent = metrics_.service.sent_bytes(Channel::kShard);
  Send(stream, "out", call->dtype(), q_shape, r->out, sent);
  Send(stream, "lse", "FP32", lse_shape, std::as_bytes(std::span(r->lse)), sent);
  int rank;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rank = rank_;
    session->out = std::move(r->out);
    session->lse = std::move(r->lse);
    // Only while the ring that made it stands: a rebuild cleared the table.
    if (epoch_ == *epoch) sessions_[call->session()] = session;
    PublishLocked();
  }
  SendMetrics(stream, rank, r->stats);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Backward(grpc::ServerContext* /*context*/, Stream* stream) {
  wire::TensorAssembler assembler(max_call_bytes_);
  std::shared_ptr<Session> session;
  std::optional<ShardCall> seen;
  absl::StatusOr<ShardCall> call = ReadCall(
      stream, assembler,
      [&](const ShardCall& c) {
        assembler.Expect("dout", c.dtype(), {c.batch(), c.heads(), c.shard_len(), c.head_dim()},
                         true);
      },
      seen, metrics_.service.received_bytes(Channel::kShard));
  if (!call.ok()) return Withdrawn(seen, call.status());
  absl::StatusOr<uint64_t> epoch = CheckGeneration(*call);
  if (!epoch.ok()) return wire::ToGrpc(epoch.status());
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(call->session());
    if (it != sessions_.end()) session = it->second;
  }
  std::shared_ptr<ring::Transport> t = transport();
  const absl::Duration timeout =
      absl::Seconds(call->timeout_seconds() > 0 ? call->timeout_seconds() : 60);
  // Take the turn even for a call that will fail, so later calls still run.
  if (absl::Status s = sequencer_.WaitTurn(*epoch, call->sequence(), timeout); !s.ok()) {
    return wire::ToGrpc(s);
  }
  if (!session || !t) {
    sequencer_.Done(*epoch, call->sequence());
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("session '", call->session(), "' is not on this worker"));
  }
  const ShardCall& fc = session->call;
  // Validated when the session's forward ran.
  const kernels::LayerConfig layer = *LayerFromProto(fc.layer(), fc.head_dim());
  const ring::RingCall rc = RingCallOf(*call, layer);
  const std::vector<std::byte> dout = assembler.Take("dout");
  ring::ShardRef shard{DTypeFromWire(fc.dtype()),
                       fc.batch(),
                       fc.heads(),
                       fc.kv_heads(),
                       fc.shard_len(),
                       fc.head_dim(),
                       session->q,
                       session->k,
                       session->v,
                       session->doc,
                       session->vision,
                       session->padding};
  absl::StatusOr<ring::RingBackwardResult> r =
      ring::RingBackward(*t, backend_, shard, session->out, dout, session->lse, rc);
  sequencer_.Done(*epoch, call->sequence());
  if (!r.ok()) return wire::ToGrpc(r.status());
  metrics_.RecordRingCall(Op::kBackward, r->stats);
  const std::vector<int64_t> q_shape = {fc.batch(), fc.heads(), fc.shard_len(), fc.head_dim()};
  const std::vector<int64_t> kv_shape = {fc.batch(), fc.kv_heads(), fc.shard_len(), fc.head_dim()};
  prometheus::Counter& sent = metrics_.service.sent_bytes(Channel::kShard);
  Send(stream, "dq", "FP32", q_shape, std::as_bytes(std::span(r->dq)), sent);
  Send(stream, "dk", "FP32", kv_shape, std::as_bytes(std::span(r->dk)), sent);
  Send(stream, "dv", "FP32", kv_shape, std::as_bytes(std::span(r->dv)), sent);
  int rank;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rank = rank_;
  }
  SendMetrics(stream, rank, r->stats);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Release(grpc::ServerContext* /*context*/,
                                        const worker::v1::WorkerReleaseRequest* request,
                                        worker::v1::WorkerReleaseResponse* /*response*/) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.erase(request->session());
  PublishLocked();
  return grpc::Status::OK;
}

}  // namespace ringattn::server
