#include "server/worker/worker_service.h"

#include <cstring>

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

// Reads the call message and then every tensor chunk until the coordinator
// closes its side.
absl::StatusOr<ShardCall> ReadCall(Stream* stream, wire::TensorAssembler& assembler,
                                   const std::function<void(const ShardCall&)>& expect) {
  ShardRequest req;
  if (!stream->Read(&req) || !req.has_call()) {
    return absl::InvalidArgumentError("a shard stream must start with its call");
  }
  ShardCall call = req.call();
  RINGATTN_RETURN_IF_ERROR(CheckCall(call));
  expect(call);
  while (stream->Read(&req)) {
    if (!req.has_chunk()) return absl::InvalidArgumentError("only tensor chunks follow the call");
    RINGATTN_RETURN_IF_ERROR(assembler.Add(req.chunk()));
  }
  RINGATTN_RETURN_IF_ERROR(assembler.Finish());
  return call;
}

ring::RingCall RingCallOf(const ShardCall& call, const kernels::LayerConfig& layer) {
  ring::RingCall rc;
  rc.layer = layer;
  rc.batch_has_vision = call.batch_has_vision();
  rc.sequence = call.sequence();
  rc.timeout = absl::Seconds(call.timeout_seconds() > 0 ? call.timeout_seconds() : 60);
  return rc;
}

bool Send(Stream* stream, const std::string& name, const std::string& dtype,
          const std::vector<int64_t>& shape, std::span<const std::byte> data) {
  bool ok = true;
  wire::SplitTensor(name, dtype, shape, data, [&](attention::v1::TensorChunk& chunk) {
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

WorkerServiceImpl::WorkerServiceImpl(kernels::cpu::CpuContext& ctx, uint64_t max_call_bytes)
    : ctx_(ctx), max_call_bytes_(max_call_bytes) {}

std::shared_ptr<ring::Transport> WorkerServiceImpl::transport() {
  std::lock_guard<std::mutex> lock(mu_);
  return transport_;
}

grpc::Status WorkerServiceImpl::JoinRing(grpc::ServerContext* /*context*/,
                                         const worker::v1::JoinRingRequest* request,
                                         worker::v1::JoinRingResponse* /*response*/) {
  auto stub = std::shared_ptr<worker::v1::CoordinatorControl::StubInterface>(
      worker::v1::CoordinatorControl::NewStub(
          grpc::CreateChannel(request->store_address(), grpc::InsecureChannelCredentials())));
  GrpcStore store(stub);
  ring::GlooOptions options;
  options.rank = request->rank();
  options.size = request->cp();
  options.generation = request->generation();
  options.hostname = request->listen_host().empty() ? "127.0.0.1" : request->listen_host();
  absl::StatusOr<std::unique_ptr<ring::Transport>> t = ring::ConnectGloo(store, options);
  if (!t.ok()) return wire::ToGrpc(t.status());
  std::lock_guard<std::mutex> lock(mu_);
  transport_ = std::move(*t);
  rank_ = request->rank();
  sessions_.clear();  // A new ring: state of the old one is gone.
  sequencer_.Reset();
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Forward(grpc::ServerContext* /*context*/, Stream* stream) {
  wire::TensorAssembler assembler(max_call_bytes_);
  auto session = std::make_shared<Session>();
  absl::StatusOr<ShardCall> call = ReadCall(stream, assembler, [&](const ShardCall& c) {
    const std::vector<int64_t> q = {c.batch(), c.heads(), c.shard_len(), c.head_dim()};
    const std::vector<int64_t> kv = {c.batch(), c.kv_heads(), c.shard_len(), c.head_dim()};
    const std::vector<int64_t> tokens = {c.batch(), c.shard_len()};
    assembler.Expect("q", c.dtype(), q, true);
    assembler.Expect("k", c.dtype(), kv, true);
    assembler.Expect("v", c.dtype(), kv, true);
    assembler.Expect("doc_ids", "INT32", tokens, true);
    assembler.Expect("vision_groups", "INT32", tokens, true);
    assembler.Expect("padding_mask", "BOOL", tokens, true);
  });
  if (!call.ok()) return wire::ToGrpc(call.status());
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
  if (absl::Status s = sequencer_.WaitTurn(call->sequence(), rc.timeout); !s.ok()) {
    return wire::ToGrpc(s);
  }
  std::shared_ptr<ring::Transport> t = transport();
  if (!t) {
    sequencer_.Done(call->sequence());
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
  absl::StatusOr<ring::RingForwardResult> r = ring::RingForward(*t, ctx_, shard, rc);
  sequencer_.Done(call->sequence());
  if (!r.ok()) return wire::ToGrpc(r.status());

  const std::vector<int64_t> q_shape = {call->batch(), call->heads(), call->shard_len(),
                                        call->head_dim()};
  const std::vector<int64_t> lse_shape = {call->batch(), call->heads(), call->shard_len()};
  Send(stream, "out", call->dtype(), q_shape, r->out);
  Send(stream, "lse", "FP32", lse_shape, std::as_bytes(std::span(r->lse)));
  int rank;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rank = rank_;
    session->out = std::move(r->out);
    session->lse = std::move(r->lse);
    sessions_[call->session()] = session;
  }
  SendMetrics(stream, rank, r->stats);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Backward(grpc::ServerContext* /*context*/, Stream* stream) {
  wire::TensorAssembler assembler(max_call_bytes_);
  std::shared_ptr<Session> session;
  absl::StatusOr<ShardCall> call = ReadCall(stream, assembler, [&](const ShardCall& c) {
    assembler.Expect("dout", c.dtype(), {c.batch(), c.heads(), c.shard_len(), c.head_dim()}, true);
  });
  if (!call.ok()) return wire::ToGrpc(call.status());
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(call->session());
    if (it != sessions_.end()) session = it->second;
  }
  std::shared_ptr<ring::Transport> t = transport();
  const absl::Duration timeout =
      absl::Seconds(call->timeout_seconds() > 0 ? call->timeout_seconds() : 60);
  // Take the turn even for a call that will fail, so later calls still run.
  if (absl::Status s = sequencer_.WaitTurn(call->sequence(), timeout); !s.ok()) {
    return wire::ToGrpc(s);
  }
  if (!session || !t) {
    sequencer_.Done(call->sequence());
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
      ring::RingBackward(*t, ctx_, shard, session->out, dout, session->lse, rc);
  sequencer_.Done(call->sequence());
  if (!r.ok()) return wire::ToGrpc(r.status());
  const std::vector<int64_t> q_shape = {fc.batch(), fc.heads(), fc.shard_len(), fc.head_dim()};
  const std::vector<int64_t> kv_shape = {fc.batch(), fc.kv_heads(), fc.shard_len(), fc.head_dim()};
  Send(stream, "dq", "FP32", q_shape, std::as_bytes(std::span(r->dq)));
  Send(stream, "dk", "FP32", kv_shape, std::as_bytes(std::span(r->dk)));
  Send(stream, "dv", "FP32", kv_shape, std::as_bytes(std::span(r->dv)));
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
  return grpc::Status::OK;
}

}  // namespace ringattn::server
