#include "server/coordinator/ring_call_runner.h"

#include <optional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "proto/wire/tensor_stream.h"

namespace ringattn::coordinator {
namespace {

// Starts one rank's worker RPC (Forward or Backward).
using ShardMethod = std::unique_ptr<ShardStream> (worker::v1::WorkerService::StubInterface::*)(
    grpc::ClientContext*);

// The commit of a call on ring `generation`: a sequence, unless the client
// has gone or the ring changed.
std::function<std::optional<uint64_t>()> CommitIfWanted(Cluster& cluster, uint64_t generation,
                                                        grpc::ServerContext& context) {
  return [&cluster, generation, &context]() -> std::optional<uint64_t> {
    if (context.IsCancelled()) return std::nullopt;
    absl::StatusOr<uint64_t> sequence = cluster.Commit(generation);
    if (!sequence.ok()) return std::nullopt;
    return *sequence;
  };
}

// The deadline of a worker stream: the ring's bound, not the client's
// deadline. Cutting one rank's stream mid-ring would abort the ring for
// every call; a client that leaves is handled at the commit gate (before
// the ring) or by releasing its session (after).
std::chrono::system_clock::time_point ShardDeadline(absl::Duration bound) {
  return std::chrono::system_clock::now() + absl::ToChronoNanoseconds(bound);
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

// Whether a failed ring call left the ring's transport aborted (the ring
// aborts on any error inside it), so the ring must be rebuilt.
bool BreaksRing(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsInternal(s) ||
         absl::IsAborted(s) || absl::IsUnknown(s);
}

}  // namespace

RingCallRunner::RingCallRunner(const Env& env, grpc::ServerContext& context,
                               Clock::time_point start, const Cluster::Ticket& ticket,
                               Method method, const worker::v1::ShardCall& call,
                               const batch::ShardLayout& layout)
    : env_(env),
      context_(context),
      start_(start),
      generation_(ticket.generation),
      layout_(layout),
      api_received_(env.metrics.service.received_bytes(server::Channel::kApi)),
      api_sent_(env.metrics.service.sent_bytes(server::Channel::kApi)),
      gate_(static_cast<int>(ticket.stubs.size()),
            CommitIfWanted(env.cluster, ticket.generation, context)),
      down_watch_(env.cluster.WatchDown([this](const std::string& down) {
        {
          std::lock_guard<std::mutex> lock(fault_mu_);
          if (fault_.ok()) fault_ = absl::UnavailableError(down);
        }
        cancel_.Cancel();
      })) {
  const ShardMethod open = method == Method::kForward
                               ? &worker::v1::WorkerService::StubInterface::Forward
                               : &worker::v1::WorkerService::StubInterface::Backward;
  const auto deadline = ShardDeadline(env.ring_timeout * 2 + absl::Seconds(30));
  prometheus::Counter& sent = env.metrics.service.sent_bytes(server::Channel::kShard);
  prometheus::Counter& received = env.metrics.service.received_bytes(server::Channel::kShard);
  for (size_t r = 0; r < ticket.stubs.size(); ++r) {
    calls_.ranks.push_back(std::make_unique<RankCall>(
        static_cast<int>(r),
        [stub = ticket.stubs[r], open](grpc::ClientContext* ctx) { return ((*stub).*open)(ctx); },
        call, deadline, gate_, cancel_, sent, received));
  }
}

absl::Status RingCallRunner::InputsEnded(ClientInputs& inputs) {
  // Read() also ends when the client cancels or its deadline passes: such
  // a stream is not a request even if every byte came, and must not take a
  // place in the ring's call order.
  if (context_.IsCancelled()) {
    return absl::CancelledError("the client cancelled before the stream ended");
  }
  const absl::Status s = inputs.Finish();
  return absl::IsUnavailable(s) ? RanksFailed() : s;
}

absl::Status RingCallRunner::SendMetadata(const batch::AttentionMetadata& metadata) {
  for (auto [name, dtype, tensor] : {std::tuple{"doc_ids", "INT32", &metadata.doc_ids},
                                     {"vision_groups", "INT32", &metadata.vision_groups},
                                     {"padding_mask", "BOOL", &metadata.padding_mask}}) {
    if (!SendSlices(name, dtype, *tensor, layout_, calls_)) return RanksFailed();
  }
  return absl::OkStatus();
}

absl::Status RingCallRunner::SendRegionOutputs(RegionOutputs outputs,
                                               const std::vector<ExpectedTensor>& answer) {
  region_outputs_ = std::move(outputs);
  region_outputs_.direct.resize(calls_.ranks.size(), false);
  for (const ExpectedTensor& t : answer) {
    auto it = region_outputs_.tensors.find(t.name);
    if (it == region_outputs_.tensors.end()) continue;
    int64_t inner = 1;
    for (size_t i = 3; i < t.shape.size(); ++i) inner *= t.shape[i];
    const auto position_bytes = inner * static_cast<int64_t>(wire::WireDTypeSize(t.dtype));
    for (size_t r = 0; r < calls_.ranks.size(); ++r) {
      if (!region_outputs_.direct[r]) continue;
      if (!calls_.ranks[r]->SendRegion(SliceOf(t.name, it->second, t.shape[0] * t.shape[1],
                                               position_bytes, layout_, static_cast<int>(r)))) {
        return RanksFailed();
      }
    }
  }
  return absl::OkStatus();
}

void RingCallRunner::Commit(bool batch_has_vision) {
  committed_ = true;
  for (auto& r : calls_.ranks) r->EndInputs(/*commit=*/true, batch_has_vision);
}

absl::Status RingCallRunner::AwaitAnswers(std::vector<ExpectedTensor> answer) {
  answer_ = std::move(answer);
  for (auto& r : calls_.ranks) {
    // A rank that writes an output into its region itself does not answer it.
    std::vector<ExpectedTensor> sent;
    for (const ExpectedTensor& t : answer_) {
      if (!region_outputs_.Direct(r->rank(), t.name)) sent.push_back(t);
    }
    readers_.emplace_back(*r, std::move(sent));
  }
  for (ShardReader& reader : readers_) {
    if (absl::Status s = reader.Start(); !s.ok()) {
      // A rank's own error over the withdrawals and aborts it caused.
      const absl::Status first = RanksError(FinishAll(calls_));
      return Failed(first.ok() ? s : first);
    }
  }
  return absl::OkStatus();
}

absl::Status RingCallRunner::Settle(const absl::Status& sent, absl::string_view client_left) {
  const absl::Status ranks = RanksError(FinishAll(calls_));
  if (!ranks.ok()) return Failed(ranks);
  if (sent.ok()) return absl::OkStatus();
  return absl::IsCancelled(sent) ? ClientLeft(client_left) : Failed(sent);
}

attention::v1::CallMetrics RingCallRunner::Metrics(double flops) const {
  const double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  attention::v1::CallMetrics m;
  m.set_seconds(seconds);
  m.set_flops(flops);
  m.set_flops_per_second(seconds > 0 ? flops / seconds : 0.0);
  for (const auto& r : calls_.ranks) *m.add_ranks() = r->metrics();
  m.set_layout(layout_.kind() == batch::LayoutKind::kZigzag
                   ? attention::v1::SHARD_LAYOUT_ZIGZAG
                   : attention::v1::SHARD_LAYOUT_CONTIGUOUS);
  return m;
}

absl::Status RingCallRunner::RanksError(const std::vector<absl::Status>& statuses) {
  const absl::Status first = FirstError(statuses);
  if (!absl::IsCancelled(first)) return first;
  std::lock_guard<std::mutex> lock(fault_mu_);
  return fault_.ok() ? first : fault_;
}

absl::Status RingCallRunner::RanksFailed() { return Failed(RanksError(FinishAll(calls_))); }

absl::Status RingCallRunner::Failed(const absl::Status& status) {
  Undo();
  // A call cancelled after its commit had every rank abort its transport,
  // whatever the error that started it; one withdrawn at the gate ran on
  // no rank.
  if (!BreaksRing(status) && !(gate_.committed() && cancel_.cancelled())) return status;
  {
    // A rank marked down cancelled the call: the cluster knows, and probing
    // the ranks again would wait out the hung one's health timeout.
    std::lock_guard<std::mutex> lock(fault_mu_);
    if (!fault_.ok()) {
      return absl::UnavailableError(
          absl::StrCat(fault_.message(), "; the ring is rebuilt when it is back"));
    }
  }
  const std::string down = env_.cluster.CheckRanksNow();
  env_.cluster.RingFailed(generation_, down.empty() ? std::string(status.message()) : down);
  if (down.empty()) return status;
  // A call cancelled because a rank went down already says so.
  const std::string cause =
      status.message() == down ? "" : absl::StrCat(" (", status.message(), ")");
  return absl::UnavailableError(absl::StrCat(down, cause, "; the ring is rebuilt when it is back"));
}

absl::Status RingCallRunner::ClientLeft(absl::string_view message) {
  Undo();
  return absl::CancelledError(message);
}

void RingCallRunner::Undo() {
  // Before the commit no rank ran, so none holds anything to undo.
  if (!committed_ || !undo_) return;
  std::exchange(undo_, nullptr)();
}

}  // namespace ringattn::coordinator
