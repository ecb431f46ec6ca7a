#ifndef RINGATTN_SERVER_COORDINATOR_RING_CALL_RUNNER_H_
#define RINGATTN_SERVER_COORDINATOR_RING_CALL_RUNNER_H_

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "attention/v1/attention_service.pb.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "kernels/status_macros.h"
#include "server/batch/batch_prep.h"
#include "server/batch/shard_layout.h"
#include "server/coordinator/cluster.h"
#include "server/coordinator/commit_gate.h"
#include "server/coordinator/coordinator_metrics.h"
#include "server/coordinator/idle_watch.h"
#include "server/coordinator/rank_call.h"
#include "server/coordinator/shard_io.h"
#include "server/coordinator/shard_reader.h"
#include "worker/v1/worker_service.pb.h"

namespace ringattn::coordinator {

// One Forward or Backward on the ring, as the coordinator runs it: every
// rank's stream opened at once, the client's inputs forwarded while they
// arrive, the commit once every rank has all of them, then the ranks'
// answers gathered into the client's stream and the call's metrics. Each
// step's error is the one to report to the client: a rank's own failure
// over the withdrawals it caused, naming the ranks that are down, with the
// ring marked for rebuilding when the failure broke it.
class RingCallRunner {
 public:
  enum class Method { kForward, kBackward };
  using Clock = std::chrono::steady_clock;

  // What does not change from call to call.
  struct Env {
    Cluster& cluster;
    CoordinatorMetrics& metrics;
    absl::Duration ring_timeout;  // Bound on every ring wait.
    // A request stream that sends nothing this long is cancelled (IdleWatch).
    absl::Duration stream_idle_timeout = absl::ZeroDuration();
  };

  // Opens every rank's `method` stream on the ring of `ticket`, each told
  // `call`. `context`: the client's call (the commit waits for none that
  // was cancelled). `start`: when it began (its metrics time all of it).
  RingCallRunner(const Env& env, grpc::ServerContext& context, Clock::time_point start,
                 const Cluster::Ticket& ticket, Method method, const worker::v1::ShardCall& call,
                 const batch::ShardLayout& layout);

  RankCalls& ranks() { return calls_; }
  // What a failure after the commit must undo before it is reported (a
  // forward's session, left on the ranks that finished).
  void UndoOnFailure(std::function<void()> undo) { undo_ = std::move(undo); }

  // Reads the rest of the client's stream into `inputs`: its tensor pieces,
  // forwarded as they come. CANCELLED when the client cancelled before its
  // stream ended: such a stream is not a request, even if every byte came.
  template <typename Response, typename Request>
  // `on_bytes` (optional) hears of each piece's or reference's bytes as it
  // arrives, and fails the call by failing.
  absl::Status ReadInputs(grpc::ServerReaderWriterInterface<Response, Request>& stream,
                          ClientInputs& inputs,
                          const std::function<absl::Status(uint64_t)>& on_bytes = nullptr);
  // Sends every rank its slice of the metadata.
  absl::Status SendMetadata(const batch::AttentionMetadata& metadata);
  // Before the commit: the outputs of `answer` (as AwaitAnswers takes it)
  // that go into regions. Their direct ranks are told where to write them;
  // the others' answers are written there by Finish.
  absl::Status SendRegionOutputs(RegionOutputs outputs, const std::vector<ExpectedTensor>& answer);
  // Every rank has its inputs: the call is committed on all, or on none if
  // the client left or the ring changed meanwhile.
  void Commit(bool batch_has_vision);
  // Waits until every rank has started to answer with `answer` (its tensors
  // in order, [B, heads, L, ...] each): its ring step is done.
  absl::Status AwaitAnswers(std::vector<ExpectedTensor> answer);
  // Streams the answers to the client, cut to S, then the call's metrics.
  // `sent`: how writing to the client went so far. `client_left`: the
  // message when the client went away.
  template <typename Response, typename Request>
  absl::Status Finish(grpc::ServerReaderWriterInterface<Response, Request>& stream,
                      absl::Status sent, double flops, absl::string_view client_left);

 private:
  absl::Status InputsEnded(ClientInputs& inputs);
  // The error of the ranks' statuses to report: a rank's own failure over
  // the cancellations it caused, else why the call was cancelled (a rank
  // went down).
  absl::Status RanksError(const std::vector<absl::Status>& statuses);
  // Waits for every rank's stream to end. The status for the client: a
  // rank's error first, then that of sending the answer (`sent`).
  absl::Status Settle(const absl::Status& sent, absl::string_view client_left);
  attention::v1::CallMetrics Metrics(double flops) const;
  // When a rank failed while taking inputs: its own error, and the ring's.
  absl::Status RanksFailed();
  // A failed ring call's status for the client: names the ranks that are
  // down, and marks the ring for rebuilding when the failure broke it.
  absl::Status Failed(const absl::Status& status);
  // CANCELLED with `message`: the client went away after the commit.
  absl::Status ClientLeft(absl::string_view message);
  void Undo();

  const Env env_;
  grpc::ServerContext& context_;
  const Clock::time_point start_;
  const uint64_t generation_;
  const batch::ShardLayout layout_;
  prometheus::Counter& api_received_;
  prometheus::Counter& api_sent_;
  std::function<void()> undo_;
  bool committed_ = false;
  std::vector<ExpectedTensor> answer_;
  RegionOutputs region_outputs_;
  CommitGate gate_;
  std::mutex fault_mu_;
  absl::Status fault_;  // Why the call was cancelled from outside. Guarded by fault_mu_.
  CallCancel cancel_;
  // After the gate and the cancel: going out of scope, it withdraws every
  // rank's call and waits for them before those go.
  RankCalls calls_;
  std::vector<ShardReader> readers_;
  // Last, so it goes first: while it lasts, a rank marked down cancels the
  // call.
  Cluster::DownWatch down_watch_;
};

template <typename Response, typename Request>
absl::Status RingCallRunner::ReadInputs(
    grpc::ServerReaderWriterInterface<Response, Request>& stream, ClientInputs& inputs,
    const std::function<absl::Status(uint64_t)>& on_bytes) {
  Request req;
  IdleWatch idle(context_, env_.stream_idle_timeout);
  while (true) {
    idle.Waiting(true);
    const bool more = stream.Read(&req);
    idle.Waiting(false);
    if (!more) break;
    absl::Status s;
    if (req.has_tensor_ref()) {
      if (on_bytes) s = on_bytes(req.tensor_ref().byte_size());
      if (s.ok()) s = inputs.AddRef(req.tensor_ref());
    } else if (req.has_chunk()) {
      api_received_.Increment(static_cast<double>(req.chunk().data().size()));
      if (on_bytes) s = on_bytes(req.chunk().data().size());
      if (s.ok()) s = inputs.Add(*req.mutable_chunk());
    } else {
      return absl::InvalidArgumentError("only tensors follow the header");
    }
    if (!s.ok()) return absl::IsUnavailable(s) ? RanksFailed() : s;
  }
  if (idle.fired()) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the request stream sent nothing for ", absl::FormatDuration(env_.stream_idle_timeout),
        " (--stream_idle_timeout_seconds): the call was cancelled"));
  }
  return InputsEnded(inputs);
}

template <typename Response, typename Request>
absl::Status RingCallRunner::Finish(grpc::ServerReaderWriterInterface<Response, Request>& stream,
                                    absl::Status sent, double flops,
                                    absl::string_view client_left) {
  for (const ExpectedTensor& tensor : answer_) {
    if (!sent.ok()) break;
    if (auto it = region_outputs_.tensors.find(tensor.name); it != region_outputs_.tensors.end()) {
      sent = ScatterAnswer(readers_, tensor, layout_, it->second, region_outputs_.direct);
      continue;
    }
    sent = GatherAnswer(readers_, tensor, layout_, [&](attention::v1::TensorChunk& chunk) {
      api_sent_.Increment(static_cast<double>(chunk.data().size()));
      Response resp;
      *resp.mutable_chunk() = std::move(chunk);
      return stream.Write(resp);
    });
  }
  RINGATTN_RETURN_IF_ERROR(Settle(sent, client_left));
  Response last;
  *last.mutable_metrics() = Metrics(flops);
  return stream.Write(last) ? absl::OkStatus() : ClientLeft(client_left);
}

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_RING_CALL_RUNNER_H_
