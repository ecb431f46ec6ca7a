#include "server/coordinator/attention_service.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "grpcpp/client_context.h"
#include "kernels/cpu/validate.h"
#include "kernels/status_macros.h"
#include "proto/wire/grpc_status.h"
#include "proto/wire/security.h"
#include "proto/wire/tensor_stream.h"
#include "server/batch/batch_prep.h"
#include "server/batch/host_tensor.h"
#include "server/common/layer_config.h"

namespace ringattn::server {
namespace {

using attention::v1::TensorChunk;
using batch::ElemType;
using batch::HostTensor;
using Clock = std::chrono::steady_clock;

constexpr int64_t kMaxDim = int64_t{1} << 31;
// At most what every worker accepts (CheckCall in worker_service.cc): a
// call the coordinator takes must never be refused by a rank.
constexpr int64_t kMaxBatch = int64_t{1} << 20;
constexpr int64_t kMaxHeads = 4096;

absl::StatusOr<ElemType> ElemOf(const std::string& dtype) {
  if (dtype == "FP32") return ElemType::kF32;
  if (dtype == "BF16") return ElemType::kBF16;
  if (dtype == "FP16") return ElemType::kF16;
  if (dtype == "INT32") return ElemType::kI32;
  if (dtype == "BOOL") return ElemType::kU8;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", dtype, "'"));
}

HostTensor Host(const std::string& dtype, std::vector<int64_t> shape, std::vector<std::byte> data) {
  HostTensor t;
  t.type = *ElemOf(dtype);
  t.shape = std::move(shape);
  t.data = std::move(data);
  return t;
}

// Header checks before any tensor memory is sized by the client's numbers.
absl::Status CheckHeader(const attention::v1::ForwardHeader& h, uint64_t max_bytes) {
  RINGATTN_RETURN_IF_ERROR(ParseDType(h.dtype()).status());
  for (auto [name, v, max] : {std::tuple{"batch", h.batch(), kMaxBatch},
                              {"heads", h.heads(), kMaxHeads},
                              {"kv_heads", h.kv_heads(), kMaxHeads},
                              {"seq_len", h.seq_len(), kMaxDim},
                              {"head_dim", h.head_dim(), kMaxDim}}) {
    if (v < 1 || v > max) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be in [1, ", max, "], got ", v));
    }
  }
  if (h.heads() % h.kv_heads() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heads (", h.heads(), ") must be a multiple of kv_heads (", h.kv_heads(), ")"));
  }
  if (h.head_dim() > kernels::cpu::kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", h.head_dim(), " is not supported (at most ", kernels::cpu::kMaxHeadDim, ")"));
  }
  RINGATTN_RETURN_IF_ERROR(LayerFromProto(h.layer(), h.head_dim()).status());
  const long double bytes = static_cast<long double>(h.batch()) * h.seq_len() * h.head_dim() *
                            (h.heads() + 2.0L * h.kv_heads()) * wire::WireDTypeSize(h.dtype());
  if (bytes > static_cast<long double>(max_bytes)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "q, k and v take %.0Lf bytes, over this coordinator's limit of %d bytes per call", bytes,
        max_bytes));
  }
  return absl::OkStatus();
}

// Index of the first element of `data` whose exponent bits are all ones
// (Inf or NaN in every float format), or -1.
template <typename Bits>
int64_t FirstNonFinite(std::span<const std::byte> data, Bits exponent) {
  const int64_t n = static_cast<int64_t>(data.size() / sizeof(Bits));
  for (int64_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, data.data() + i * sizeof(Bits), sizeof(Bits));
    if ((bits & exponent) == exponent) return i;
  }
  return -1;
}

// Q, K, V and dO must be finite. A NaN or Inf would not stay in its own
// rows: masked keys still enter a tile's products with weight 0, and
// 0 * NaN is NaN, so one NaN in a document's V reaches other documents'
// outputs in the same tile, depending on tiling and sharding.
absl::Status CheckFinite(const char* name, const HostTensor& t) {
  const int64_t at = t.type == ElemType::kF32    ? FirstNonFinite<uint32_t>(t.data, 0x7f800000u)
                     : t.type == ElemType::kBF16 ? FirstNonFinite<uint16_t>(t.data, 0x7f80u)
                                                 : FirstNonFinite<uint16_t>(t.data, 0x7c00u);
  if (at < 0) return absl::OkStatus();
  std::vector<int64_t> index(t.shape.size());
  for (size_t d = t.shape.size(), rest = static_cast<size_t>(at); d-- > 0;) {
    index[d] = static_cast<int64_t>(rest % t.shape[d]);
    rest /= t.shape[d];
  }
  return absl::InvalidArgumentError(absl::StrCat(name, " holds a NaN or Inf at [",
                                                 absl::StrJoin(index, ", "),
                                                 "]; q, k, v and dout must be finite"));
}

// What every worker is told about one ring call (its place in the global
// order comes with the commit).
worker::v1::ShardCall ShardCallFor(const attention::v1::ForwardHeader& h, const std::string& handle,
                                   bool has_vision, int64_t shard_len, absl::Duration timeout) {
  worker::v1::ShardCall call;
  call.set_session(handle);
  *call.mutable_layer() = h.layer();
  call.set_batch_has_vision(has_vision);
  call.set_dtype(h.dtype());
  call.set_batch(h.batch());
  call.set_heads(h.heads());
  call.set_kv_heads(h.kv_heads());
  call.set_shard_len(shard_len);
  call.set_head_dim(h.head_dim());
  call.set_timeout_seconds(absl::ToDoubleSeconds(timeout));
  return call;
}

// One worker's part of a call: what it returned, and how it went.
struct RankResult {
  absl::Status status;
  std::map<std::string, HostTensor> tensors;
  attention::v1::RankMetrics metrics;
};

// Splits a tensor [outer..., len, inner...] around `dim`.
void AroundDim(const std::vector<int64_t>& shape, size_t dim, int64_t& outer, int64_t& inner) {
  outer = 1;
  inner = 1;
  for (size_t i = 0; i < dim; ++i) outer *= shape[i];
  for (size_t i = dim + 1; i < shape.size(); ++i) inner *= shape[i];
}

// One input of a shard: the slice [begin, end) of `whole` along `dim`,
// streamed straight from `whole` (never copied into a slice first).
struct SliceInput {
  std::string name;
  std::string dtype;
  const HostTensor* whole;
  size_t dim;
};

bool WriteSlice(const SliceInput& in, int64_t begin, int64_t end,
                absl::FunctionRef<bool(TensorChunk&)> emit) {
  const HostTensor& t = *in.whole;
  int64_t outer, inner;
  AroundDim(t.shape, in.dim, outer, inner);
  std::vector<int64_t> shape = t.shape;
  shape[in.dim] = end - begin;
  const int64_t row = inner * static_cast<int64_t>(batch::ElemSize(t.type));
  const int64_t len = t.shape[in.dim];
  wire::PieceWriter writer(in.name, in.dtype, shape, emit);
  for (int64_t o = 0; o < outer; ++o) {
    const std::byte* p = t.data.data() + (o * len + begin) * row;
    if (!writer.Append({p, static_cast<size_t>((end - begin) * row)})) return false;
  }
  return writer.Finish();
}

// Every rank's dispatch meets here once its inputs are sent; the call is
// committed to all ranks or to none. Committing to some ranks only would
// leave them waiting in the ring for the rest until their timeout.
class CommitGate {
 public:
  // `commit` runs once, when every rank has arrived and sent its inputs: it
  // returns the call's sequence, or nothing to withdraw the call.
  CommitGate(int ranks, std::function<std::optional<uint64_t>()> commit)
      : waiting_(ranks), commit_(std::move(commit)) {}

  // Blocks until every rank arrived; the sequence if the call is committed.
  std::optional<uint64_t> Arrive(bool sent) {
    std::unique_lock<std::mutex> lock(mu_);
    all_sent_ &= sent;
    if (--waiting_ == 0) {
      if (all_sent_) sequence_ = commit_();
      cv_.notify_all();
    }
    cv_.wait(lock, [&] { return waiting_ == 0; });
    return sequence_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiting_;
  bool all_sent_ = true;
  std::optional<uint64_t> sequence_;
  std::function<std::optional<uint64_t>()> commit_;
};

// The commit of a call on ring `generation`: a sequence, unless the client
// has gone or the ring changed.
std::function<std::optional<uint64_t>()> CommitIfWanted(Cluster& cluster, uint64_t generation,
                                                        grpc::ServerContext* context) {
  return [&cluster, generation, context]() -> std::optional<uint64_t> {
    if (context->IsCancelled()) return std::nullopt;
    absl::StatusOr<uint64_t> sequence = cluster.Commit(generation);
    if (!sequence.ok()) return std::nullopt;
    return *sequence;
  };
}

// Sends `call` and the rank's slices [begin, end) of `inputs` to one worker
// and collects what it streams back. `expect` declares the returned tensors.
// The stream's deadline is the client's, capped at `timeout`.
template <typename Method>
RankResult Dispatch(
    Method method, int rank, const worker::v1::ShardCall& call,
    const std::vector<SliceInput>& inputs, int64_t begin, int64_t end,
    const std::vector<std::pair<std::string, std::pair<std::string, std::vector<int64_t>>>>& expect,
    std::chrono::system_clock::time_point deadline, CommitGate& gate, prometheus::Counter& sent,
    prometheus::Counter& received) {
  RankResult result;
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  auto stream = method(&ctx);
  worker::v1::ShardRequest req;
  *req.mutable_call() = call;
  bool ok = stream->Write(req);
  for (const SliceInput& in : inputs) {
    if (!ok) break;
    ok = WriteSlice(in, begin, end, [&](TensorChunk& chunk) {
      sent.Increment(static_cast<double>(chunk.data().size()));
      worker::v1::ShardRequest r;
      *r.mutable_chunk() = std::move(chunk);
      return stream->Write(r);
    });
  }
  const std::optional<uint64_t> sequence = gate.Arrive(ok);
  if (!sequence) {
    ctx.TryCancel();
    const grpc::Status s = stream->Finish();
    result.status = s.ok() || s.error_code() == grpc::StatusCode::CANCELLED
                        ? absl::CancelledError("the call was withdrawn before the ring started")
                        : absl::Status(wire::FromGrpc(s).code(),
                                       absl::StrCat("rank ", rank, ": ", s.error_message()));
    return result;
  }
  worker::v1::ShardRequest commit;
  commit.mutable_commit()->set_sequence(*sequence);
  stream->Write(commit);
  stream->WritesDone();
  wire::TensorAssembler assembler(uint64_t{1} << 40);
  for (const auto& [name, spec] : expect) assembler.Expect(name, spec.first, spec.second, true);
  worker::v1::ShardResponse resp;
  absl::Status bad;
  while (stream->Read(&resp)) {
    if (resp.has_metrics()) {
      result.metrics = resp.metrics();
    } else if (bad.ok()) {
      received.Increment(static_cast<double>(resp.chunk().data().size()));
      bad = assembler.Add(resp.chunk());
    }
  }
  const grpc::Status s = stream->Finish();
  if (!s.ok()) {
    const absl::Status st = wire::FromGrpc(s);
    result.status = absl::Status(st.code(), absl::StrCat("rank ", rank, ": ", st.message()));
    return result;
  }
  if (bad.ok()) bad = assembler.Finish();
  if (!bad.ok()) {
    result.status =
        absl::InternalError(absl::StrCat("rank ", rank, " answered badly: ", bad.message()));
    return result;
  }
  for (const auto& [name, spec] : expect) {
    result.tensors[name] = Host(spec.first, spec.second, assembler.Take(name));
  }
  return result;
}

// Runs `one(rank)` for every rank at once and returns the results.
std::vector<RankResult> ForEachRank(int cp, const std::function<RankResult(int)>& one) {
  std::vector<RankResult> results(cp);
  std::vector<std::thread> threads;
  for (int r = 0; r < cp; ++r) threads.emplace_back([&, r] { results[r] = one(r); });
  for (auto& t : threads) t.join();
  return results;
}

// The error to report: a rank's own failure over the withdrawals it caused.
absl::Status FirstError(const std::vector<RankResult>& results) {
  absl::Status first;
  for (const RankResult& r : results) {
    if (r.status.ok()) continue;
    if (!absl::IsCancelled(r.status)) return r.status;
    if (first.ok()) first = r.status;
  }
  return first;
}

// Streams the ranks' `name` outputs as one tensor, concatenated along the
// sequence dim `dim` and cut to `seq_len`, straight from the ranks' buffers.
template <typename Response, typename Stream>
bool SendGathered(Stream* stream, const std::vector<RankResult>& results, const std::string& name,
                  const std::string& dtype, size_t dim, int64_t seq_len,
                  prometheus::Counter& sent) {
  const HostTensor& first = results[0].tensors.at(name);
  int64_t outer, inner;
  AroundDim(first.shape, dim, outer, inner);
  const int64_t len = first.shape[dim];  // L, the same on every rank.
  const int64_t row = inner * static_cast<int64_t>(batch::ElemSize(first.type));
  std::vector<int64_t> shape = first.shape;
  shape[dim] = seq_len;
  wire::PieceWriter writer(name, dtype, shape, [&](TensorChunk& chunk) {
    sent.Increment(static_cast<double>(chunk.data().size()));
    Response resp;
    *resp.mutable_chunk() = std::move(chunk);
    return stream->Write(resp);
  });
  for (int64_t o = 0; o < outer; ++o) {
    for (size_t r = 0; r < results.size(); ++r) {
      const int64_t rows = std::min<int64_t>(len, seq_len - static_cast<int64_t>(r) * len);
      if (rows <= 0) break;  // The rest is padding.
      const std::byte* p = results[r].tensors.at(name).data.data() + o * len * row;
      if (!writer.Append({p, static_cast<size_t>(rows * row)})) return false;
    }
  }
  return writer.Finish();
}

attention::v1::CallMetrics Metrics(const std::vector<RankResult>& results, double seconds,
                                   double flops) {
  attention::v1::CallMetrics m;
  m.set_seconds(seconds);
  m.set_flops(flops);
  m.set_flops_per_second(seconds > 0 ? flops / seconds : 0.0);
  for (const RankResult& r : results) *m.add_ranks() = r.metrics;
  return m;
}

// FLOPs of the pairs the position rules allow (causal, window; documents
// and images not counted): 4 * B * H * D per pair.
double ForwardFlops(const attention::v1::ForwardHeader& h, const kernels::LayerConfig& layer) {
  const double S = static_cast<double>(h.seq_len());
  double pairs = S * S;
  if (layer.causal) pairs = S * (S + 1) / 2;
  if (layer.kind == kernels::LayerKind::kSliding && layer.causal) {
    const double w = std::min<double>(static_cast<double>(layer.window), S);
    pairs = w * S - w * (w - 1) / 2;
  }
  return 4.0 * h.batch() * h.heads() * h.head_dim() * pairs;
}

// Whom per-client limits count a call against: "id:" and the identity its
// credentials prove (token or certificate name), else "peer:" and its host.
// The peer's port is dropped: one client's connections share its limits.
std::string LimitKey(const grpc::ServerContext& context) {
  if (std::optional<std::string> id = wire::ProvenClientIdentity(context)) {
    return absl::StrCat("id:", *id);
  }
  std::string peer = context.peer();
  const size_t colon = peer.rfind(':');
  if (colon != std::string::npos && !absl::StartsWith(peer, "unix:")) peer.resize(colon);
  return absl::StrCat("peer:", peer);
}

// Sessions opened under a proven identity are that client's alone; without
// one (no tokens, no client certificates) the handle is the capability.
template <typename SessionT>
bool MayUse(const SessionT& session, const std::string& caller) {
  return !absl::StartsWith(session.client, "id:") || session.client == caller;
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Whether a failed ring call left the ring's transport aborted (the ring
// aborts on any error inside it), so the ring must be rebuilt.
bool BreaksRing(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsInternal(s) ||
         absl::IsAborted(s) || absl::IsUnknown(s);
}

// The deadline of a worker stream: the ring's bound, not the client's
// deadline. Cutting one rank's stream mid-ring would abort the ring for
// every call; a client that leaves is handled at the commit gate (before
// the ring) or by releasing its session (after).
std::chrono::system_clock::time_point ShardDeadline(absl::Duration bound) {
  return std::chrono::system_clock::now() + absl::ToChronoNanoseconds(bound);
}

// Keeps ringattn_calls_in_flight and the latency histogram for one call.
class CallScope {
 public:
  CallScope(CoordinatorMetrics& m, Op op) : m_(m), op_(op), t0_(Clock::now()) {
    m_.calls_in_flight[op_].Increment();
  }
  ~CallScope() { m_.calls_in_flight[op_].Decrement(); }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  Clock::time_point start() const { return t0_; }
  // A completed call: its latency and its FLOPs.
  void Completed(double flops) {
    const double seconds = Since(t0_);
    m_.call_duration_seconds[op_].Observe(seconds);
    m_.flops_total[op_].Increment(flops);
    if (seconds > 0) m_.achieved_flops_per_second[op_].Set(flops / seconds);
  }

 private:
  CoordinatorMetrics& m_;
  const Op op_;
  const Clock::time_point t0_;
};

}  // namespace

AttentionServiceImpl::AttentionServiceImpl(Cluster& cluster, CoordinatorOptions options,
                                           CoordinatorMetrics& metrics)
    : cluster_(cluster), options_(options), metrics_(metrics) {
  metrics_.memory_budget_bytes.Set(static_cast<double>(options_.memory_budget_bytes));
}

void AttentionServiceImpl::PublishLocked() {
  metrics_.service.sessions_open.Set(static_cast<double>(sessions_.size()));
  metrics_.service.memory_held_bytes.Set(static_cast<double>(bytes_held_));
}

void AttentionServiceImpl::ForgetLocked(uint64_t bytes, const std::string& client) {
  bytes_held_ -= bytes;
  auto it = clients_.find(client);
  if (it != clients_.end()) {
    it->second.bytes -= bytes;
    if (--it->second.sessions <= 0) clients_.erase(it);
  }
  PublishLocked();
}

absl::Status AttentionServiceImpl::RingCallFailed(uint64_t generation, const absl::Status& status) {
  if (!BreaksRing(status)) return status;
  const std::string down = cluster_.CheckRanksNow();
  cluster_.RingFailed(generation, down.empty() ? std::string(status.message()) : down);
  if (down.empty()) return status;
  return absl::UnavailableError(
      absl::StrCat(down, " (", status.message(), "); the ring is rebuilt when it is back"));
}

std::vector<std::string> AttentionServiceImpl::DropExpired() {
  const absl::Time now = absl::Now();
  std::vector<std::string> expired;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.expires < now) {
      const uint64_t bytes = it->second.bytes;
      const std::string client = it->second.client;
      expired.push_back(it->first);
      it = sessions_.erase(it);
      ForgetLocked(bytes, client);
    } else {
      ++it;
    }
  }
  return expired;
}

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

grpc::Status AttentionServiceImpl::Forward(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<attention::v1::ForwardResponse, attention::v1::ForwardRequest>*
        stream) {
  CallScope scope(metrics_, Op::kForward);
  const std::string client = LimitKey(*context);
  prometheus::Counter& api_in = metrics_.service.received_bytes(Channel::kApi);
  attention::v1::ForwardRequest req;
  if (!stream->Read(&req) || !req.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "a Forward stream must start with its header");
  }
  const attention::v1::ForwardHeader h = req.header();
  if (absl::Status s = CheckHeader(h, options_.max_call_bytes); !s.ok()) return wire::ToGrpc(s);
  const kernels::LayerConfig layer = *LayerFromProto(h.layer(), h.head_dim());
  const int64_t B = h.batch(), H = h.heads(), Hkv = h.kv_heads(), S = h.seq_len(), D = h.head_dim();
  wire::TensorAssembler assembler(options_.max_call_bytes);
  assembler.Expect("q", h.dtype(), {B, H, S, D}, true);
  assembler.Expect("k", h.dtype(), {B, Hkv, S, D}, true);
  assembler.Expect("v", h.dtype(), {B, Hkv, S, D}, true);
  assembler.Expect("doc_ids", "INT32", {B, S}, false);
  assembler.Expect("vision_groups", "INT32", {B, S}, false);
  assembler.Expect("padding_mask", "BOOL", {B, S}, false);
  while (stream->Read(&req)) {
    if (!req.has_chunk()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "only tensors follow the header");
    }
    api_in.Increment(static_cast<double>(req.chunk().data().size()));
    if (absl::Status s = assembler.Add(req.chunk()); !s.ok()) return wire::ToGrpc(s);
  }
  // Read() also ends when the client cancels or its deadline passes: such
  // a stream is not a request even if every byte came, and must not take a
  // place in the ring's call order.
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client cancelled before the stream ended");
  }
  if (absl::Status s = assembler.Finish(); !s.ok()) return wire::ToGrpc(s);
  if (absl::Status s = cluster_.WaitReady(absl::Seconds(5)); !s.ok()) return wire::ToGrpc(s);

  const int cp = cluster_.cp();
  const int64_t P = batch::PaddedLength(S, cp);
  const int64_t L = P / cp;
  // Metadata over the whole sequence (SPEC §1): padding, documents (1 for
  // real tokens when absent), vision groups.
  HostTensor padding = assembler.Has("padding_mask")
                           ? Host("BOOL", {B, S}, assembler.Take("padding_mask"))
                           : HostTensor::Zeros(ElemType::kU8, {B, S});
  HostTensor doc = HostTensor::Zeros(ElemType::kI32, {B, S});
  if (assembler.Has("doc_ids")) {
    doc = Host("INT32", {B, S}, assembler.Take("doc_ids"));
  } else {
    for (int64_t i = 0; i < B * S; ++i) doc.SetInt(i, padding.IntAt(i) != 0 ? 0 : 1);
  }
  HostTensor vision = HostTensor::Zeros(ElemType::kI32, {B, S});
  bool has_vision = false;
  if (assembler.Has("vision_groups")) {
    vision = Host("INT32", {B, S}, assembler.Take("vision_groups"));
    for (int64_t i = 0; i < B * S; ++i) has_vision |= vision.IntAt(i) >= 0;
  } else {
    for (int64_t i = 0; i < B * S; ++i) vision.SetInt(i, -1);
  }
  // Pad every sequence tensor to P: Q/K/V 0, padding 1, documents 0, vision -1.
  std::vector<std::pair<std::string, HostTensor>> whole;
  for (const char* name : {"q", "k", "v"}) {
    const int64_t heads = std::string(name) == "q" ? H : Hkv;
    HostTensor t = Host(h.dtype(), {B, heads, S, D}, assembler.Take(name));
    if (absl::Status s = CheckFinite(name, t); !s.ok()) return wire::ToGrpc(s);
    if (P == S) {  // Already a multiple of 2 * cp: no copy.
      whole.emplace_back(name, std::move(t));
      continue;
    }
    auto padded = batch::PadDim(t, 2, P, 0);
    if (!padded.ok()) return wire::ToGrpc(padded.status());
    whole.emplace_back(name, *std::move(padded));
  }
  for (auto [name, t, fill] : {std::tuple{"doc_ids", &doc, 0},
                               {"vision_groups", &vision, -1},
                               {"padding_mask", &padding, 1}}) {
    auto padded = batch::PadDim(*t, 1, P, fill);
    if (!padded.ok()) return wire::ToGrpc(padded.status());
    whole.emplace_back(name, *std::move(padded));
  }
  const uint64_t session_bytes =
      static_cast<uint64_t>(B) * P * D * (2 * H + 2 * Hkv) * wire::WireDTypeSize(h.dtype()) +
      static_cast<uint64_t>(B) * P * (H * 4 + 9);
  std::string handle;
  std::vector<std::string> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = DropExpired();
    if (bytes_held_ + session_bytes > options_.memory_budget_bytes) {
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("memory budget exceeded: this session needs ", session_bytes, " bytes, ",
                       bytes_held_, " of ", options_.memory_budget_bytes,
                       " are held; release sessions or lower the batch"));
    }
    const ClientUsage usage = clients_.contains(client) ? clients_[client] : ClientUsage{};
    if (options_.max_sessions_per_client > 0 &&
        usage.sessions >= options_.max_sessions_per_client) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("client '", client, "' has ", usage.sessions,
                                       " sessions open, its limit; release some first"));
    }
    if (options_.max_client_memory_bytes > 0 &&
        usage.bytes + session_bytes > options_.max_client_memory_bytes) {
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("client '", client, "' holds ", usage.bytes, " bytes of session state; ",
                       session_bytes, " more would pass its limit of ",
                       options_.max_client_memory_bytes, "; release sessions first"));
    }
    ClientUsage& mine = clients_[client];
    ++mine.sessions;
    mine.bytes += session_bytes;
    bytes_held_ += session_bytes;
    PublishLocked();
    std::random_device rd;
    handle = absl::StrFormat("s%d-%08x", ++next_session_, rd());
  }
  ReleaseOnWorkers(expired);
  auto unreserve = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    ForgetLocked(session_bytes, client);
  };

  absl::StatusOr<Cluster::Ticket> ticket = cluster_.NextCall();
  if (!ticket.ok()) {
    unreserve();
    return wire::ToGrpc(ticket.status());
  }
  worker::v1::ShardCall call = ShardCallFor(h, handle, has_vision, L, options_.ring_timeout);
  call.set_generation(ticket->generation);
  const auto& workers = ticket->stubs;
  std::vector<SliceInput> inputs;
  for (const auto& [name, t] : whole) {
    const std::string dtype = name == "doc_ids" || name == "vision_groups" ? "INT32"
                              : name == "padding_mask"                     ? "BOOL"
                                                                           : h.dtype();
    inputs.push_back({name, dtype, &t, t.shape.size() == 4 ? size_t{2} : size_t{1}});
  }
  CommitGate gate(cp, CommitIfWanted(cluster_, ticket->generation, context));
  const auto deadline = ShardDeadline(options_.ring_timeout * 2 + absl::Seconds(30));
  prometheus::Counter& shard_out = metrics_.service.sent_bytes(Channel::kShard);
  prometheus::Counter& shard_in = metrics_.service.received_bytes(Channel::kShard);
  const std::vector<RankResult> results = ForEachRank(cp, [&](int r) {
    return Dispatch([&](grpc::ClientContext* ctx) { return workers[r]->Forward(ctx); }, r, call,
                    inputs, r * L, (r + 1) * L,
                    {{"out", {h.dtype(), {B, H, L, D}}}, {"lse", {"FP32", {B, H, L}}}}, deadline,
                    gate, shard_out, shard_in);
  });
  if (absl::Status s = FirstError(results); !s.ok()) {
    unreserve();
    ReleaseOnWorkers({handle});  // Ranks that finished keep the session otherwise.
    return wire::ToGrpc(RingCallFailed(ticket->generation, s));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_[handle] = Session{
        h,     P, ticket->generation, has_vision, session_bytes, absl::Now() + options_.session_ttl,
        client};
    PublishLocked();
  }
  attention::v1::ForwardResponse resp;
  attention::v1::SessionInfo* info = resp.mutable_session();
  info->set_handle(handle);
  info->set_padded_len(P);
  info->set_cp(cp);
  info->set_ring_generation(ticket->generation);
  prometheus::Counter& api_out = metrics_.service.sent_bytes(Channel::kApi);
  const double flops = ForwardFlops(h, layer);
  attention::v1::ForwardResponse last;
  *last.mutable_metrics() = Metrics(results, Since(scope.start()), flops);
  const bool delivered =
      stream->Write(resp) &&
      SendGathered<attention::v1::ForwardResponse>(stream, results, "out", h.dtype(), 2, S,
                                                   api_out) &&
      SendGathered<attention::v1::ForwardResponse>(stream, results, "lse", "FP32", 2, S, api_out) &&
      stream->Write(last);
  if (!delivered) {
    // The client left (cancelled, or its deadline passed): nobody can use
    // or release this session, so free it on the workers now.
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (sessions_.erase(handle) > 0) ForgetLocked(session_bytes, client);
    }
    ReleaseOnWorkers({handle});
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away; session released");
  }
  scope.Completed(flops);
  return grpc::Status::OK;
}

grpc::Status AttentionServiceImpl::Backward(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<attention::v1::BackwardResponse, attention::v1::BackwardRequest>*
        stream) {
  CallScope scope(metrics_, Op::kBackward);
  prometheus::Counter& api_in = metrics_.service.received_bytes(Channel::kApi);
  attention::v1::BackwardRequest req;
  if (!stream->Read(&req) || !req.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "a Backward stream must start with its header");
  }
  const std::string handle = req.header().handle();
  Session session;
  bool found = false;
  std::vector<std::string> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = DropExpired();
    auto it = sessions_.find(handle);
    if (it != sessions_.end() && MayUse(it->second, LimitKey(*context))) {
      session = it->second;
      found = true;
    }
  }
  ReleaseOnWorkers(expired);
  if (!found) {
    return wire::ToGrpc(absl::NotFoundError(
        absl::StrCat("session handle '", handle, "' is unknown, released or expired")));
  }
  if (session.generation != cluster_.View().generation) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the ring was rebuilt since this session's forward; run forward again");
  }
  const attention::v1::ForwardHeader& h = session.header;
  const int64_t B = h.batch(), H = h.heads(), Hkv = h.kv_heads(), S = h.seq_len(), D = h.head_dim(),
                P = session.padded_len;
  wire::TensorAssembler assembler(options_.max_call_bytes);
  assembler.Expect("dout", h.dtype(), {B, H, S, D}, true);
  while (stream->Read(&req)) {
    if (!req.has_chunk()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "only tensors follow the header");
    }
    api_in.Increment(static_cast<double>(req.chunk().data().size()));
    if (absl::Status s = assembler.Add(req.chunk()); !s.ok()) return wire::ToGrpc(s);
  }
  // Read() also ends when the client cancels or its deadline passes: such
  // a stream is not a request even if every byte came, and must not take a
  // place in the ring's call order.
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client cancelled before the stream ended");
  }
  if (absl::Status s = assembler.Finish(); !s.ok()) return wire::ToGrpc(s);
  absl::StatusOr<HostTensor> dout = Host(h.dtype(), {B, H, S, D}, assembler.Take("dout"));
  if (absl::Status s = CheckFinite("dout", *dout); !s.ok()) return wire::ToGrpc(s);
  dout = batch::PadDim(*dout, 2, P, 0);
  if (!dout.ok()) return wire::ToGrpc(dout.status());

  const int cp = cluster_.cp();
  const int64_t L = P / cp;
  absl::StatusOr<Cluster::Ticket> ticket = cluster_.NextCall();
  if (!ticket.ok()) return wire::ToGrpc(ticket.status());
  if (ticket->generation != session.generation) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the ring was rebuilt since this session's forward; run forward again");
  }
  worker::v1::ShardCall call =
      ShardCallFor(h, handle, session.batch_has_vision, L, options_.ring_timeout);
  call.set_generation(ticket->generation);
  const auto& workers = ticket->stubs;
  CommitGate gate(cp, CommitIfWanted(cluster_, ticket->generation, context));
  const auto deadline = ShardDeadline(options_.ring_timeout * 2 + absl::Seconds(30));
  prometheus::Counter& shard_out = metrics_.service.sent_bytes(Channel::kShard);
  prometheus::Counter& shard_in = metrics_.service.received_bytes(Channel::kShard);
  const std::vector<RankResult> results = ForEachRank(cp, [&](int r) {
    return Dispatch([&](grpc::ClientContext* ctx) { return workers[r]->Backward(ctx); }, r, call,
                    {SliceInput{"dout", h.dtype(), &*dout, 2}}, r * L, (r + 1) * L,
                    {{"dq", {"FP32", {B, H, L, D}}},
                     {"dk", {"FP32", {B, Hkv, L, D}}},
                     {"dv", {"FP32", {B, Hkv, L, D}}}},
                    deadline, gate, shard_out, shard_in);
  });
  if (absl::Status s = FirstError(results); !s.ok()) {
    return wire::ToGrpc(RingCallFailed(ticket->generation, s));
  }
  prometheus::Counter& api_out = metrics_.service.sent_bytes(Channel::kApi);
  for (const char* name : {"dq", "dk", "dv"}) {
    if (!SendGathered<attention::v1::BackwardResponse>(stream, results, name, "FP32", 2, S,
                                                       api_out)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
  }
  const double flops = 2.5 * ForwardFlops(h, *LayerFromProto(h.layer(), D));
  attention::v1::BackwardResponse last;
  *last.mutable_metrics() = Metrics(results, Since(scope.start()), flops);
  if (!stream->Write(last))
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  scope.Completed(flops);
  return grpc::Status::OK;
}

grpc::Status AttentionServiceImpl::Release(grpc::ServerContext* context,
                                           const attention::v1::ReleaseRequest* request,
                                           attention::v1::ReleaseResponse* /*response*/) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(request->handle());
    if (it == sessions_.end()) {
      return wire::ToGrpc(
          absl::NotFoundError(absl::StrCat("session handle '", request->handle(), "' is unknown")));
    }
    if (!MayUse(it->second, LimitKey(*context))) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("session handle '", request->handle(), "' is unknown"));
    }
    const uint64_t bytes = it->second.bytes;
    const std::string owner = it->second.client;
    sessions_.erase(it);
    ForgetLocked(bytes, owner);
  }
  ReleaseOnWorkers({request->handle()});
  return grpc::Status::OK;
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
  std::vector<std::string> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    expired = DropExpired();
    response->set_open_sessions(static_cast<int>(sessions_.size()));
  }
  ReleaseOnWorkers(expired);
  return grpc::Status::OK;
}

}  // namespace ringattn::server
