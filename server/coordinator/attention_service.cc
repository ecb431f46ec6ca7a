#include "server/coordinator/attention_service.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
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
#include "server/coordinator/commit_gate.h"
#include "server/coordinator/rank_call.h"
#include "server/coordinator/sequence_router.h"
#include "server/coordinator/shard_reader.h"

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

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
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
// (Inf or NaN in every float format), or -1. Blocks are reduced without an
// early exit (a min over ~bits & exponent, 0 for such an element), so the
// loop vectorizes; only a block that holds one is searched.
template <typename Bits>
int64_t FirstNonFinite(std::span<const std::byte> data, Bits exponent) {
  constexpr int64_t kBlock = 1024;
  const auto n = static_cast<int64_t>(data.size() / sizeof(Bits));
  const auto at = [&](int64_t i) {
    Bits bits;
    std::memcpy(&bits, data.data() + i * sizeof(Bits), sizeof(Bits));
    return bits;
  };
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    Bits least = exponent;
    for (int64_t i = b; i < end; ++i) least = std::min<Bits>(least, ~at(i) & exponent);
    if (least != 0) continue;
    for (int64_t i = b; i < end; ++i) {
      if ((at(i) & exponent) == exponent) return i;
    }
  }
  return -1;
}

// Q, K, V and dO must be finite. A NaN or Inf would not stay in its own
// rows: masked keys still enter a tile's products with weight 0, and
// 0 * NaN is NaN, so one NaN in a document's V reaches other documents'
// outputs in the same tile, depending on tiling and sharding. The check runs
// on the pieces as they stream through; an element may straddle two pieces.
class FiniteScan {
 public:
  FiniteScan(std::string name, const std::string& dtype, std::vector<int64_t> shape)
      : name_(std::move(name)),
        shape_(std::move(shape)),
        size_(wire::WireDTypeSize(dtype)),
        bf16_(dtype == "BF16") {}

  absl::Status Add(std::span<const std::byte> piece) {
    if (carried_ > 0) {
      const size_t n = std::min(size_ - carried_, piece.size());
      std::memcpy(carry_.data() + carried_, piece.data(), n);
      carried_ += n;
      piece = piece.subspan(n);
      if (carried_ < size_) return absl::OkStatus();
      carried_ = 0;
      RINGATTN_RETURN_IF_ERROR(Check({carry_.data(), size_}));
    }
    const size_t whole = piece.size() / size_ * size_;
    RINGATTN_RETURN_IF_ERROR(Check(piece.first(whole)));
    carried_ = piece.size() - whole;
    std::memcpy(carry_.data(), piece.data() + whole, carried_);
    return absl::OkStatus();
  }

 private:
  absl::Status Check(std::span<const std::byte> elements) {
    const int64_t at = size_ == 4 ? FirstNonFinite<uint32_t>(elements, 0x7f800000u)
                       : bf16_    ? FirstNonFinite<uint16_t>(elements, 0x7f80u)
                                  : FirstNonFinite<uint16_t>(elements, 0x7c00u);
    if (at < 0) {
      index_ += static_cast<int64_t>(elements.size() / size_);
      return absl::OkStatus();
    }
    std::vector<int64_t> index(shape_.size());
    for (size_t d = shape_.size(), rest = static_cast<size_t>(index_ + at); d-- > 0;) {
      index[d] = static_cast<int64_t>(rest % shape_[d]);
      rest /= shape_[d];
    }
    return absl::InvalidArgumentError(absl::StrCat(name_, " holds a NaN or Inf at [",
                                                   absl::StrJoin(index, ", "),
                                                   "]; q, k, v and dout must be finite"));
  }

  const std::string name_;
  const std::vector<int64_t> shape_;
  const size_t size_;
  const bool bf16_;
  std::array<std::byte, 4> carry_{};
  size_t carried_ = 0;
  int64_t index_ = 0;  // Elements checked so far.
};

// What every worker is told about one ring call (its place in the global
// order, and whether the batch holds vision tokens, come with the commit).
worker::v1::ShardCall ShardCallFor(const attention::v1::ForwardHeader& h, const std::string& handle,
                                   int64_t shard_len, absl::Duration timeout) {
  worker::v1::ShardCall call;
  call.set_session(handle);
  *call.mutable_layer() = h.layer();
  call.set_dtype(h.dtype());
  call.set_batch(h.batch());
  call.set_heads(h.heads());
  call.set_kv_heads(h.kv_heads());
  call.set_shard_len(shard_len);
  call.set_head_dim(h.head_dim());
  call.set_timeout_seconds(absl::ToDoubleSeconds(timeout));
  return call;
}

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

// A sequence tensor [B, heads, S, D] of the client's stream, forwarded to
// the ranks as it arrives: rank r gets [B, heads, L, D], its slice of the
// sequence padded with zeros to P = cp * L.
class ShardedInput {
 public:
  ShardedInput(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
               int64_t shard_len, RankCalls& calls)
      : router_(shape[0] * shape[1], shape[2], shard_len, static_cast<int>(calls.ranks.size()),
                shape[3] * static_cast<int64_t>(wire::WireDTypeSize(dtype))),
        scan_(name, dtype, shape) {
    const std::vector<int64_t> shard = {shape[0], shape[1], shard_len, shape[3]};
    for (auto& rank : calls.ranks) {
      writers_.push_back(std::make_unique<wire::PieceWriter>(
          name, dtype, shard,
          [r = rank.get()](TensorChunk& chunk) { return r->Send(std::move(chunk)); }));
    }
  }

  // Checks and forwards the next piece (a piece that falls within one
  // rank's slice is passed on as it is, not copied). INVALID_ARGUMENT for a
  // NaN or Inf; UNAVAILABLE when a rank's stream failed (its status tells
  // why).
  absl::Status Add(std::string&& piece) {
    const std::span<const std::byte> bytes = AsBytes(piece);
    RINGATTN_RETURN_IF_ERROR(scan_.Add(bytes));
    const bool sent = router_.Add(bytes, [&](int rank, std::span<const std::byte> run) {
      // The router is done with `piece` once it hands it out whole.
      if (run.data() == bytes.data() && run.size() == bytes.size()) {
        return writers_[rank]->Append(std::move(piece));
      }
      return writers_[rank]->Append(run);
    });
    return sent ? absl::OkStatus() : absl::UnavailableError("a rank stopped taking inputs");
  }

  // After the last piece: sends what the writers still hold.
  absl::Status Finish() {
    for (auto& w : writers_) {
      if (!w->Finish()) return absl::UnavailableError("a rank stopped taking inputs");
    }
    return absl::OkStatus();
  }

 private:
  SequenceRouter router_;
  FiniteScan scan_;
  std::vector<std::unique_ptr<wire::PieceWriter>> writers_;
};

// Starts every rank's part of a call on the ring of `ticket`: `method` is
// the worker RPC (Forward or Backward).
using ShardMethod = std::unique_ptr<ShardStream> (worker::v1::WorkerService::StubInterface::*)(
    grpc::ClientContext*);
void OpenRanks(RankCalls& calls, const Cluster::Ticket& ticket, ShardMethod method,
               const worker::v1::ShardCall& call, std::chrono::system_clock::time_point deadline,
               CommitGate& gate, prometheus::Counter& sent, prometheus::Counter& received) {
  for (size_t r = 0; r < ticket.stubs.size(); ++r) {
    calls.ranks.push_back(std::make_unique<RankCall>(
        static_cast<int>(r),
        [stub = ticket.stubs[r], method](grpc::ClientContext* ctx) {
          return ((*stub).*method)(ctx);
        },
        call, deadline, gate, sent, received));
  }
}

// Waits for every rank's stream to end; their statuses by rank.
std::vector<absl::Status> FinishAll(RankCalls& calls) {
  for (auto& r : calls.ranks) r->EndInputs(false, false);  // No-op for ended inputs.
  std::vector<absl::Status> statuses;
  for (auto& r : calls.ranks) statuses.push_back(r->Finish());
  return statuses;
}

// The error to report: a rank's own failure over the withdrawals it caused.
absl::Status FirstError(const std::vector<absl::Status>& statuses) {
  absl::Status first;
  for (const absl::Status& s : statuses) {
    if (s.ok()) continue;
    if (!absl::IsCancelled(s)) return s;
    if (first.ok()) first = s;
  }
  return first;
}

// Streams the ranks' answers `name`, [B, heads, L, D] (or [B, heads, L]),
// to the client as one tensor along the sequence, cut to `seq_len`: read
// from the ranks in the client's row-major order, the padding read and
// dropped. CANCELLED when the client left; a rank's error otherwise.
template <typename Response, typename Stream>
absl::Status SendGathered(Stream* stream, std::vector<ShardReader>& readers,
                          const ExpectedTensor& shard, int64_t seq_len, prometheus::Counter& sent) {
  int64_t outer, inner;
  AroundDim(shard.shape, 2, outer, inner);
  const int64_t len = shard.shape[2];  // L, the same on every rank.
  const auto row = static_cast<uint64_t>(inner) * wire::WireDTypeSize(shard.dtype);
  std::vector<int64_t> shape = shard.shape;
  shape[2] = seq_len;
  bool client_ok = true;
  wire::PieceWriter writer(shard.name, shard.dtype, shape, [&](TensorChunk& chunk) {
    sent.Increment(static_cast<double>(chunk.data().size()));
    Response resp;
    *resp.mutable_chunk() = std::move(chunk);
    client_ok = stream->Write(resp);
    return client_ok;
  });
  const auto went_away = absl::CancelledError("the client went away");
  for (int64_t o = 0; o < outer; ++o) {
    for (size_t r = 0; r < readers.size(); ++r) {
      const int64_t rows =
          std::clamp<int64_t>(seq_len - static_cast<int64_t>(r) * len, int64_t{0}, len);
      absl::Status s =
          readers[r].Read(static_cast<uint64_t>(rows) * row,
                          [&](std::span<const std::byte> run, std::string* whole) {
                            return whole ? writer.Append(std::move(*whole)) : writer.Append(run);
                          });
      if (s.ok() && rows < len) s = readers[r].Skip(static_cast<uint64_t>(len - rows) * row);
      if (!s.ok()) return client_ok ? s : went_away;
    }
  }
  return writer.Finish() ? absl::OkStatus() : went_away;
}

// Waits until every rank has started to answer (its ring step is done). On
// a failure, the error to report: a rank's own over the withdrawals and
// aborts it caused.
absl::Status AwaitAnswers(std::vector<ShardReader>& readers, RankCalls& calls) {
  for (ShardReader& reader : readers) {
    if (absl::Status s = reader.Start(); !s.ok()) {
      const absl::Status first = FirstError(FinishAll(calls));
      return first.ok() ? s : first;
    }
  }
  return absl::OkStatus();
}

attention::v1::CallMetrics Metrics(const RankCalls& calls, double seconds, double flops) {
  attention::v1::CallMetrics m;
  m.set_seconds(seconds);
  m.set_flops(flops);
  m.set_flops_per_second(seconds > 0 ? flops / seconds : 0.0);
  for (const auto& r : calls.ranks) *m.add_ranks() = r->metrics();
  return m;
}

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
  if (absl::Status s = cluster_.WaitReady(absl::Seconds(5)); !s.ok()) return wire::ToGrpc(s);
  const int cp = cluster_.cp();
  const int64_t P = batch::PaddedLength(S, cp);
  const int64_t L = P / cp;

  // The session's place in the budget is taken before any tensor byte is
  // read: the inputs go on to the workers while they arrive.
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
  bool opened = false;  // The reservation became a session.
  absl::Cleanup unreserve = [&] {
    if (opened) return;
    std::lock_guard<std::mutex> lock(mu_);
    ForgetLocked(session_bytes, client);
  };

  absl::StatusOr<Cluster::Ticket> ticket = cluster_.NextCall();
  if (!ticket.ok()) return wire::ToGrpc(ticket.status());
  worker::v1::ShardCall call = ShardCallFor(h, handle, L, options_.ring_timeout);
  call.set_generation(ticket->generation);
  CommitGate gate(cp, CommitIfWanted(cluster_, ticket->generation, context));
  const auto deadline = ShardDeadline(options_.ring_timeout * 2 + absl::Seconds(30));
  prometheus::Counter& shard_out = metrics_.service.sent_bytes(Channel::kShard);
  prometheus::Counter& shard_in = metrics_.service.received_bytes(Channel::kShard);
  // Declared after the gate: going out of scope, it withdraws every rank's
  // call and waits for them before the gate goes.
  RankCalls calls;
  OpenRanks(calls, *ticket, &worker::v1::WorkerService::StubInterface::Forward, call, deadline,
            gate, shard_out, shard_in);
  // A rank that failed while taking inputs: its own error, and the ring's.
  auto rank_failed = [&] {
    return wire::ToGrpc(RingCallFailed(ticket->generation, FirstError(FinishAll(calls))));
  };

  wire::TensorAssembler assembler(options_.max_call_bytes);
  std::map<std::string, ShardedInput> sharded;
  for (const char* name : {"q", "k", "v"}) {
    const std::vector<int64_t> shape = {B, std::string(name) == "q" ? H : Hkv, S, D};
    assembler.Expect(name, h.dtype(), shape, true, /*keep=*/false);
    sharded.try_emplace(name, name, h.dtype(), shape, L, calls);
  }
  assembler.Expect("doc_ids", "INT32", {B, S}, false);
  assembler.Expect("vision_groups", "INT32", {B, S}, false);
  assembler.Expect("padding_mask", "BOOL", {B, S}, false);
  while (stream->Read(&req)) {
    if (!req.has_chunk()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "only tensors follow the header");
    }
    api_in.Increment(static_cast<double>(req.chunk().data().size()));
    if (absl::Status s = assembler.Add(req.chunk()); !s.ok()) return wire::ToGrpc(s);
    auto it = sharded.find(req.chunk().name());
    if (it == sharded.end()) continue;
    if (absl::Status s = it->second.Add(std::move(*req.mutable_chunk()->mutable_data())); !s.ok()) {
      return absl::IsUnavailable(s) ? rank_failed() : wire::ToGrpc(s);
    }
  }
  // Read() also ends when the client cancels or its deadline passes: such
  // a stream is not a request even if every byte came, and must not take a
  // place in the ring's call order.
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client cancelled before the stream ended");
  }
  if (absl::Status s = assembler.Finish(); !s.ok()) return wire::ToGrpc(s);
  for (auto& [name, input] : sharded) {
    if (!input.Finish().ok()) return rank_failed();
  }

  // Metadata over the whole sequence (SPEC §1): padding, documents (1 for
  // real tokens when absent), vision groups; padded with padding 1,
  // documents 0, vision -1.
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
  for (auto [name, dtype, t, fill] : {std::tuple{"doc_ids", "INT32", &doc, 0},
                                      {"vision_groups", "INT32", &vision, -1},
                                      {"padding_mask", "BOOL", &padding, 1}}) {
    absl::StatusOr<HostTensor> padded = batch::PadDim(*t, 1, P, fill);
    if (!padded.ok()) return wire::ToGrpc(padded.status());
    const SliceInput in{name, dtype, &*padded, 1};
    for (int r = 0; r < cp; ++r) {
      RankCall& rank = *calls.ranks[r];
      if (!WriteSlice(in, r * L, (r + 1) * L,
                      [&](TensorChunk& chunk) { return rank.Send(std::move(chunk)); })) {
        return rank_failed();
      }
    }
  }
  for (auto& r : calls.ranks) r->EndInputs(/*commit=*/true, has_vision);

  // The answer: a rank's first piece comes once its ring step is done.
  const ExpectedTensor out_shard{"out", h.dtype(), {B, H, L, D}};
  const ExpectedTensor lse_shard{"lse", "FP32", {B, H, L}};
  std::vector<ShardReader> readers;
  for (auto& r : calls.ranks) readers.emplace_back(*r, std::vector{out_shard, lse_shard});
  if (absl::Status s = AwaitAnswers(readers, calls); !s.ok()) {
    ReleaseOnWorkers({handle});  // Ranks that finished keep the session otherwise.
    return wire::ToGrpc(RingCallFailed(ticket->generation, s));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_[handle] = Session{
        h,     P, ticket->generation, has_vision, session_bytes, absl::Now() + options_.session_ttl,
        client};
    opened = true;
    PublishLocked();
  }
  attention::v1::ForwardResponse resp;
  attention::v1::SessionInfo* info = resp.mutable_session();
  info->set_handle(handle);
  info->set_padded_len(P);
  info->set_cp(cp);
  info->set_ring_generation(ticket->generation);
  prometheus::Counter& api_out = metrics_.service.sent_bytes(Channel::kApi);
  absl::Status sent =
      stream->Write(resp) ? absl::OkStatus() : absl::CancelledError("the client went away");
  if (sent.ok()) {
    sent = SendGathered<attention::v1::ForwardResponse>(stream, readers, out_shard, S, api_out);
  }
  if (sent.ok()) {
    sent = SendGathered<attention::v1::ForwardResponse>(stream, readers, lse_shard, S, api_out);
  }
  const absl::Status ranks = FirstError(FinishAll(calls));
  const double flops = ForwardFlops(h, layer);
  if (sent.ok() && ranks.ok()) {
    attention::v1::ForwardResponse last;
    *last.mutable_metrics() = Metrics(calls, Since(scope.start()), flops);
    if (!stream->Write(last)) sent = absl::CancelledError("the client went away");
  }
  if (!sent.ok() || !ranks.ok()) {
    // The client left (cancelled, or its deadline passed), or a rank's
    // answer broke off: nobody can use this session, so free it now.
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (sessions_.erase(handle) > 0) ForgetLocked(session_bytes, client);
    }
    ReleaseOnWorkers({handle});
    if (!ranks.ok()) return wire::ToGrpc(RingCallFailed(ticket->generation, ranks));
    if (!absl::IsCancelled(sent)) return wire::ToGrpc(RingCallFailed(ticket->generation, sent));
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
  const attention::v1::ForwardHeader& h = session.header;
  const int64_t B = h.batch(), H = h.heads(), Hkv = h.kv_heads(), S = h.seq_len(), D = h.head_dim(),
                P = session.padded_len;
  const int cp = cluster_.cp();
  const int64_t L = P / cp;
  absl::StatusOr<Cluster::Ticket> ticket = cluster_.NextCall();
  if (!ticket.ok()) return wire::ToGrpc(ticket.status());
  if (ticket->generation != session.generation) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the ring was rebuilt since this session's forward; run forward again");
  }
  worker::v1::ShardCall call = ShardCallFor(h, handle, L, options_.ring_timeout);
  call.set_generation(ticket->generation);
  CommitGate gate(cp, CommitIfWanted(cluster_, ticket->generation, context));
  const auto deadline = ShardDeadline(options_.ring_timeout * 2 + absl::Seconds(30));
  prometheus::Counter& shard_out = metrics_.service.sent_bytes(Channel::kShard);
  prometheus::Counter& shard_in = metrics_.service.received_bytes(Channel::kShard);
  RankCalls calls;  // After the gate, as in Forward.
  OpenRanks(calls, *ticket, &worker::v1::WorkerService::StubInterface::Backward, call, deadline,
            gate, shard_out, shard_in);
  auto rank_failed = [&] {
    return wire::ToGrpc(RingCallFailed(ticket->generation, FirstError(FinishAll(calls))));
  };

  const std::vector<int64_t> dout_shape = {B, H, S, D};
  wire::TensorAssembler assembler(options_.max_call_bytes);
  assembler.Expect("dout", h.dtype(), dout_shape, true, /*keep=*/false);
  ShardedInput dout("dout", h.dtype(), dout_shape, L, calls);
  while (stream->Read(&req)) {
    if (!req.has_chunk()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "only tensors follow the header");
    }
    api_in.Increment(static_cast<double>(req.chunk().data().size()));
    if (absl::Status s = assembler.Add(req.chunk()); !s.ok()) return wire::ToGrpc(s);
    if (absl::Status s = dout.Add(std::move(*req.mutable_chunk()->mutable_data())); !s.ok()) {
      return absl::IsUnavailable(s) ? rank_failed() : wire::ToGrpc(s);
    }
  }
  // As in Forward: a cancelled stream is not a request.
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client cancelled before the stream ended");
  }
  if (absl::Status s = assembler.Finish(); !s.ok()) return wire::ToGrpc(s);
  if (!dout.Finish().ok()) return rank_failed();
  for (auto& r : calls.ranks) r->EndInputs(/*commit=*/true, session.batch_has_vision);

  const std::vector<ExpectedTensor> grads = {
      {"dq", "FP32", {B, H, L, D}}, {"dk", "FP32", {B, Hkv, L, D}}, {"dv", "FP32", {B, Hkv, L, D}}};
  std::vector<ShardReader> readers;
  for (auto& r : calls.ranks) readers.emplace_back(*r, grads);
  if (absl::Status s = AwaitAnswers(readers, calls); !s.ok()) {
    return wire::ToGrpc(RingCallFailed(ticket->generation, s));
  }
  prometheus::Counter& api_out = metrics_.service.sent_bytes(Channel::kApi);
  absl::Status sent;
  for (const ExpectedTensor& grad : grads) {
    if (sent.ok()) {
      sent = SendGathered<attention::v1::BackwardResponse>(stream, readers, grad, S, api_out);
    }
  }
  const absl::Status ranks = FirstError(FinishAll(calls));
  if (!ranks.ok()) return wire::ToGrpc(RingCallFailed(ticket->generation, ranks));
  if (!sent.ok()) {
    if (!absl::IsCancelled(sent)) return wire::ToGrpc(RingCallFailed(ticket->generation, sent));
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }
  const double flops = 2.5 * ForwardFlops(h, *LayerFromProto(h.layer(), D));
  attention::v1::BackwardResponse last;
  *last.mutable_metrics() = Metrics(calls, Since(scope.start()), flops);
  if (!stream->Write(last)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }
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
