#include "server/coordinator/attention_service.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "kernels/status_macros.h"
#include "proto/wire/dtype.h"
#include "proto/wire/grpc_status.h"
#include "server/batch/batch_prep.h"
#include "server/coordinator/forward_metadata.h"
#include "server/coordinator/layout_choice.h"
#include "server/coordinator/prepare_batch.h"
#include "server/coordinator/request_convert.h"
#include "server/coordinator/shard_io.h"
#include "server/shm/shm_file.h"

namespace ringattn::coordinator {
namespace {

using Clock = RingCallRunner::Clock;
using Method = RingCallRunner::Method;

// Keeps ringattn_calls_in_flight and the latency histogram for one call.
class CallScope {
 public:
  CallScope(CoordinatorMetrics& m, server::Op op) : m_(m), op_(op), t0_(Clock::now()) {
    m_.calls_in_flight[op_].Increment();
  }
  ~CallScope() { m_.calls_in_flight[op_].Decrement(); }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  Clock::time_point start() const { return t0_; }
  // A completed call: its latency and its FLOPs.
  void Completed(double flops) {
    const double seconds = std::chrono::duration<double>(Clock::now() - t0_).count();
    m_.call_duration_seconds[op_].Observe(seconds);
    m_.flops_total[op_].Increment(flops);
    if (seconds > 0) m_.achieved_flops_per_second[op_].Set(flops / seconds);
  }

 private:
  CoordinatorMetrics& m_;
  const server::Op op_;
  const Clock::time_point t0_;
};

// The first message of a `rpc` stream, which must hold its header.
template <typename Request, typename Stream>
absl::StatusOr<Request> ReadHeader(Stream& stream, const char* rpc) {
  Request req;
  if (!stream.Read(&req) || !req.has_header()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", rpc, " stream must start with its header"));
  }
  return req;
}

// What a session holds on the workers for backward: q, k, v and out in the
// input dtype, lse, and the metadata.
uint64_t SessionBytes(const ForwardSpec& s, const batch::ShardLayout& layout) {
  const auto tokens = static_cast<uint64_t>(s.batch) * layout.padded_len();
  return tokens * s.head_dim * (2 * s.heads + 2 * s.kv_heads) * kernels::DTypeSize(s.dtype) +
         tokens * (s.heads * 4 + 9);
}

// FLOPs of the pairs the position rules allow (causal, window; documents
// and images not counted): 4 * B * H * D per pair.
double ForwardFlops(const ForwardSpec& spec) {
  const kernels::LayerConfig& layer = spec.layer;
  const double S = static_cast<double>(spec.seq_len);
  double pairs = S * S;
  if (layer.causal) pairs = S * (S + 1) / 2;
  if (layer.kind == kernels::LayerKind::kSliding && layer.causal) {
    const double w = std::min<double>(static_cast<double>(layer.window), S);
    pairs = w * S - w * (w - 1) / 2;
  }
  return 4.0 * spec.batch * spec.heads * spec.head_dim * pairs;
}

// A Forward stream's tensors after its header: q [B, H, S, D], k and v
// [B, Hkv, S, D], sharded while they arrive; the per-token metadata (each
// optional), kept.
void ExpectForwardInputs(const ForwardSpec& s, const batch::ShardLayout& layout, RankCalls& ranks,
                         ClientInputs& inputs) {
  for (auto [name, heads] : {std::pair{"q", s.heads}, {"k", s.kv_heads}, {"v", s.kv_heads}}) {
    inputs.Shard(name, s.dtype, {s.batch, heads, s.seq_len, s.head_dim}, layout, ranks);
  }
  ExpectForwardMetadata(s, inputs);
}

// What each rank answers a forward with, and a backward.
std::vector<ExpectedTensor> ForwardAnswer(const ForwardSpec& s, const batch::ShardLayout& layout) {
  const int64_t L = layout.shard_len();
  return {{"out", wire::DTypeName(s.dtype), {s.batch, s.heads, L, s.head_dim}},
          {"lse", "FP32", {s.batch, s.heads, L}}};
}
std::vector<ExpectedTensor> BackwardAnswer(const ForwardSpec& s, const batch::ShardLayout& layout) {
  const int64_t L = layout.shard_len();
  return {{"dq", "FP32", {s.batch, s.heads, L, s.head_dim}},
          {"dk", "FP32", {s.batch, s.kv_heads, L, s.head_dim}},
          {"dv", "FP32", {s.batch, s.kv_heads, L, s.head_dim}}};
}

// The first message of a Forward's answer. CANCELLED when the client left.
absl::Status WriteSession(AttentionServiceImpl::ForwardStream& stream, const std::string& handle,
                          const batch::ShardLayout& layout, uint64_t generation) {
  attention::v1::ForwardResponse resp;
  attention::v1::SessionInfo* info = resp.mutable_session();
  info->set_handle(handle);
  info->set_padded_len(layout.padded_len());
  info->set_cp(layout.cp());
  info->set_ring_generation(generation);
  info->set_layout(LayoutToProto(layout.kind()));
  return stream.Write(resp) ? absl::OkStatus() : absl::CancelledError("the client went away");
}

}  // namespace

AttentionServiceImpl::AttentionServiceImpl(Cluster& cluster, CoordinatorOptions options,
                                           CoordinatorMetrics& metrics)
    : cluster_(cluster),
      options_(options),
      metrics_(metrics),
      ring_env_{cluster, metrics, options.ring_timeout, options.stream_idle_timeout},
      shm_host_id_(options.shm_regions ? shm::ShmHostId() : ""),
      regions_({options.max_regions_per_client, options.session_ttl}),
      sessions_({options.memory_budget_bytes, options.session_ttl, options.max_sessions_per_client,
                 options.max_client_memory_bytes},
                metrics,
                [this](const std::vector<std::string>& handles) { ReleaseOnWorkers(handles); }) {}

void AttentionServiceImpl::ReleaseOnWorkers(const std::vector<std::string>& handles) {
  if (handles.empty()) return;
  const Cluster::RingView view = cluster_.View();
  for (const auto& w : view.stubs) {
    for (const std::string& handle : handles) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      worker::v1::WorkerReleaseRequest r;
      r.set_session(handle);
      worker::v1::WorkerReleaseResponse resp;
      w->Release(&ctx, r, &resp);  // Best effort: a gone worker holds nothing.
    }
  }
}

CallRegions AttentionServiceImpl::RegionsFor(const std::string& owner,
                                             const Cluster::Ticket& ticket) {
  CallRegions regions;
  if (!options_.shm_regions) return regions;
  regions.table = &regions_;
  regions.owner = owner;
  for (size_t r = 0; r < ticket.stubs.size(); ++r) {
    regions.direct.push_back(!shm_host_id_.empty() && r < ticket.shm_host_ids.size() &&
                             ticket.shm_host_ids[r] == shm_host_id_);
  }
  return regions;
}

absl::StatusOr<RegionOutputs> AttentionServiceImpl::ResolveOutputs(
    const std::string& owner,
    const google::protobuf::RepeatedPtrField<attention::v1::TensorRef>& refs,
    const std::vector<std::pair<std::string, uint64_t>>& whole) {
  RegionOutputs outputs;
  if (refs.empty()) return outputs;
  if (!options_.shm_regions) {
    return absl::FailedPreconditionError("this coordinator takes no shared-memory regions");
  }
  for (const attention::v1::TensorRef& ref : refs) {
    auto it = std::find_if(whole.begin(), whole.end(),
                           [&](const auto& w) { return w.first == ref.name(); });
    if (it == whole.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", ref.name(), "' is not an output of this call"));
    }
    if (outputs.tensors.contains(ref.name())) {
      return absl::InvalidArgumentError(absl::StrCat("output '", ref.name(), "' is named twice"));
    }
    RINGATTN_ASSIGN_OR_RETURN(RegionTensor tensor, regions_.Resolve(owner, ref, it->second));
    outputs.tensors.emplace(ref.name(), std::move(tensor));
  }
  return outputs;
}

grpc::Status AttentionServiceImpl::RegisterRegion(
    grpc::ServerContext* context, const attention::v1::RegisterRegionRequest* request,
    attention::v1::RegisterRegionResponse* /*response*/) {
  if (!options_.shm_regions) {
    return wire::ToGrpc(
        absl::FailedPreconditionError("this coordinator takes no shared-memory regions"));
  }
  return wire::ToGrpc(regions_.Register(ClientKey(*context), request->name(), request->shm_name(),
                                        request->byte_size()));
}

grpc::Status AttentionServiceImpl::UnregisterRegion(
    grpc::ServerContext* context, const attention::v1::UnregisterRegionRequest* request,
    attention::v1::UnregisterRegionResponse* /*response*/) {
  return wire::ToGrpc(regions_.Unregister(ClientKey(*context), request->name()));
}

grpc::Status AttentionServiceImpl::ListRegions(grpc::ServerContext* context,
                                               const attention::v1::ListRegionsRequest* /*request*/,
                                               attention::v1::ListRegionsResponse* response) {
  for (const auto& region : regions_.List(ClientKey(*context))) {
    attention::v1::RegionStatus* r = response->add_regions();
    r->set_name(region->name);
    r->set_shm_name(region->file.name());
    r->set_byte_size(region->byte_size);
  }
  return grpc::Status::OK;
}

grpc::Status AttentionServiceImpl::Forward(grpc::ServerContext* context, ForwardStream* stream) {
  return wire::ToGrpc(RunForward(*context, *stream));
}

absl::Status AttentionServiceImpl::RunForward(grpc::ServerContext& context, ForwardStream& stream) {
  CallScope scope(metrics_, server::Op::kForward);
  RINGATTN_ASSIGN_OR_RETURN(const auto req,
                            ReadHeader<attention::v1::ForwardRequest>(stream, "Forward"));
  RINGATTN_ASSIGN_OR_RETURN(const ForwardSpec spec,
                            ForwardSpecFromHeader(req.header(), options_.max_call_bytes));
  const std::string owner = ClientKey(context);
  const auto tokens = static_cast<uint64_t>(spec.batch * spec.heads * spec.seq_len);
  RINGATTN_ASSIGN_OR_RETURN(
      RegionOutputs outputs,
      ResolveOutputs(
          owner, req.header().outputs(),
          {{"out", tokens * spec.head_dim * kernels::DTypeSize(spec.dtype)}, {"lse", tokens * 4}}));
  RINGATTN_RETURN_IF_ERROR(cluster_.WaitReady(absl::Seconds(5)));
  RINGATTN_ASSIGN_OR_RETURN(
      const batch::ShardLayout layout,
      LayoutForCall(req.header().layout(), spec.layer, spec.seq_len, cluster_.cp()));
  // The session's place in the budget grows with the bytes that arrived (in
  // proportion to Q, K and V), before they go on to the workers: a header
  // alone holds nothing, so streams that declare large calls and send
  // slowly cannot shut others out.
  const uint64_t session_bytes = SessionBytes(spec, layout);
  const double qkv_bytes = static_cast<double>(tokens / spec.heads) * spec.head_dim *
                           (spec.heads + 2 * spec.kv_heads) * kernels::DTypeSize(spec.dtype);
  RINGATTN_ASSIGN_OR_RETURN(SessionTable::Reservation reservation, sessions_.Reserve(owner, 0));
  uint64_t received = 0;
  const auto grow = [&](uint64_t bytes) {
    received += bytes;
    const auto due = static_cast<uint64_t>(
        std::min(static_cast<double>(session_bytes),
                 static_cast<double>(session_bytes) * static_cast<double>(received) / qkv_bytes));
    return due > reservation.bytes() ? reservation.Grow(due - reservation.bytes())
                                     : absl::OkStatus();
  };
  const std::string handle = reservation.handle();
  RINGATTN_ASSIGN_OR_RETURN(const Cluster::Ticket ticket, cluster_.NextCall());
  RingCallRunner ring(ring_env_, context, scope.start(), ticket, Method::kForward,
                      ShardCallFor(spec, handle, layout, ticket.generation, options_.ring_timeout),
                      layout);
  // Ranks that finished keep the session unless it is freed.
  ring.UndoOnFailure([&] { sessions_.Drop(handle); });
  CallRegions regions = RegionsFor(owner, ticket);
  outputs.direct = regions.direct;
  RINGATTN_RETURN_IF_ERROR(ring.SendRegionOutputs(std::move(outputs), ForwardAnswer(spec, layout)));
  ClientInputs inputs(options_.max_call_bytes, std::move(regions));
  ExpectForwardInputs(spec, layout, ring.ranks(), inputs);
  RINGATTN_RETURN_IF_ERROR(ring.ReadInputs(stream, inputs, grow));
  RINGATTN_RETURN_IF_ERROR(reservation.Grow(session_bytes - reservation.bytes()));
  RINGATTN_ASSIGN_OR_RETURN(const batch::AttentionMetadata metadata,
                            ForwardMetadata(spec, layout, inputs));
  RINGATTN_RETURN_IF_ERROR(ring.SendMetadata(metadata));
  ring.Commit(metadata.has_vision);
  RINGATTN_RETURN_IF_ERROR(ring.AwaitAnswers(ForwardAnswer(spec, layout)));
  sessions_.Open(std::move(reservation), Session{.spec = spec,
                                                 .layout = layout,
                                                 .generation = ticket.generation,
                                                 .batch_has_vision = metadata.has_vision});
  const double flops = ForwardFlops(spec);
  RINGATTN_RETURN_IF_ERROR(ring.Finish(stream,
                                       WriteSession(stream, handle, layout, ticket.generation),
                                       flops, "the client went away; session released"));
  scope.Completed(flops);
  metrics_.LayoutCalls(layout.kind()).Increment();
  return absl::OkStatus();
}

grpc::Status AttentionServiceImpl::Backward(grpc::ServerContext* context, BackwardStream* stream) {
  return wire::ToGrpc(RunBackward(*context, *stream));
}

absl::Status AttentionServiceImpl::RunBackward(grpc::ServerContext& context,
                                               BackwardStream& stream) {
  CallScope scope(metrics_, server::Op::kBackward);
  RINGATTN_ASSIGN_OR_RETURN(const auto req,
                            ReadHeader<attention::v1::BackwardRequest>(stream, "Backward"));
  const std::string& handle = req.header().handle();
  const std::string owner = ClientKey(context);
  RINGATTN_ASSIGN_OR_RETURN(const Session session, sessions_.Find(handle, owner));
  const ForwardSpec& s = session.spec;
  if (const int64_t kv_heads = req.header().kv_heads(); kv_heads != 0 && kv_heads != s.kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("kv_heads ", kv_heads,
                                                   " does not match session ", handle,
                                                   ", whose forward had kv_heads ", s.kv_heads));
  }
  const auto positions = static_cast<uint64_t>(s.batch * s.seq_len * s.head_dim) * 4;
  RINGATTN_ASSIGN_OR_RETURN(RegionOutputs outputs,
                            ResolveOutputs(owner, req.header().outputs(),
                                           {{"dq", positions * s.heads},
                                            {"dk", positions * s.kv_heads},
                                            {"dv", positions * s.kv_heads}}));
  RINGATTN_ASSIGN_OR_RETURN(const Cluster::Ticket ticket, cluster_.NextCall());
  if (ticket.generation != session.generation) {
    return absl::UnavailableError(
        "the ring was rebuilt since this session's forward; run forward again");
  }
  RingCallRunner ring(
      ring_env_, context, scope.start(), ticket, Method::kBackward,
      ShardCallFor(s, handle, session.layout, ticket.generation, options_.ring_timeout),
      session.layout);
  CallRegions regions = RegionsFor(owner, ticket);
  outputs.direct = regions.direct;
  RINGATTN_RETURN_IF_ERROR(
      ring.SendRegionOutputs(std::move(outputs), BackwardAnswer(s, session.layout)));
  ClientInputs inputs(options_.max_call_bytes, std::move(regions));
  inputs.Shard("dout", s.dtype, {s.batch, s.heads, s.seq_len, s.head_dim}, session.layout,
               ring.ranks());
  RINGATTN_RETURN_IF_ERROR(ring.ReadInputs(stream, inputs));
  ring.Commit(session.batch_has_vision);
  RINGATTN_RETURN_IF_ERROR(ring.AwaitAnswers(BackwardAnswer(s, session.layout)));
  const double flops = 2.5 * ForwardFlops(s);
  RINGATTN_RETURN_IF_ERROR(ring.Finish(stream, absl::OkStatus(), flops, "the client went away"));
  scope.Completed(flops);
  return absl::OkStatus();
}

grpc::Status AttentionServiceImpl::Release(grpc::ServerContext* context,
                                           const attention::v1::ReleaseRequest* request,
                                           attention::v1::ReleaseResponse* /*response*/) {
  return wire::ToGrpc(sessions_.Release(request->handle(), ClientKey(*context)));
}

grpc::Status AttentionServiceImpl::PrepareBatch(
    grpc::ServerContext* /*context*/,
    grpc::ServerReaderWriter<attention::v1::PrepareBatchResponse,
                             attention::v1::PrepareBatchRequest>* stream) {
  return wire::ToGrpc(RunPrepareBatch(*stream, cluster_.cp(), options_.max_call_bytes));
}

grpc::Status AttentionServiceImpl::ClusterStatus(
    grpc::ServerContext* /*context*/, const attention::v1::ClusterStatusRequest* /*request*/,
    attention::v1::ClusterStatusResponse* response) {
  const Cluster::RingView view = cluster_.View();
  response->set_cp(cluster_.cp());
  response->set_ring_ready(view.ready);
  response->set_ring_generation(view.generation);
  for (size_t r = 0; r < view.workers.size(); ++r) {
    if (view.workers[r].address.empty()) continue;
    attention::v1::WorkerStatus* w = response->add_workers();
    w->set_rank(static_cast<int>(r));
    w->set_address(view.workers[r].address);
    w->set_up(view.workers[r].up);
  }
  response->set_open_sessions(sessions_.Count());
  return grpc::Status::OK;
}

}  // namespace ringattn::coordinator
