#ifndef RINGATTN_SERVER_COORDINATOR_RANK_CALL_H_
#define RINGATTN_SERVER_COORDINATOR_RANK_CALL_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "attention/v1/tensor.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"
#include "prometheus/counter.h"
#include "server/common/bounded_queue.h"
#include "server/coordinator/commit_gate.h"
#include "worker/v1/worker_service.grpc.pb.h"

// One rank's part of one ring call, on a thread of its own: the call, the
// input pieces as the coordinator hands them over (forwarded while the
// client is still sending), the commit once every rank has its inputs, then
// the rank's answer, handed back piece by piece as it arrives. Both
// directions go through small bounded queues, so no tensor is ever held
// whole in the coordinator and a slow side slows the other down instead of
// filling memory.

namespace ringattn::coordinator {

using ShardStream =
    grpc::ClientReaderWriterInterface<worker::v1::ShardRequest, worker::v1::ShardResponse>;

class RankCall;

// The cancellation of one ring call, shared by its ranks. Once one rank's
// stream fails, or a rank of the ring goes down, the others must not wait
// for it: their peers in the ring wait on it, and the client's answer on
// them. Cancel ends every rank's stream at once; each worker then aborts
// its transport, so the ring stops on every rank.
class CallCancel {
 public:
  // `on_cancel` runs once, on the first Cancel (from any thread).
  explicit CallCancel(std::function<void()> on_cancel = nullptr)
      : on_cancel_(std::move(on_cancel)) {}

  // Cancels every rank's stream, now and as they join; but `failed`'s, the
  // rank whose failure this is, which must end with its own error.
  void Cancel(RankCall* failed = nullptr);
  bool cancelled();

 private:
  friend class RankCall;
  void Add(RankCall* rank);
  void Remove(RankCall* rank);

  std::mutex mu_;
  bool cancelled_ = false;        // Guarded by mu_.
  std::vector<RankCall*> ranks_;  // Guarded by mu_.
  std::function<void()> on_cancel_;
};

class RankCall {
 public:
  using Open = std::function<std::unique_ptr<ShardStream>(grpc::ClientContext*)>;

  // A stream that fails cancels the call through `cancel` (which must
  // outlive the RankCall).
  RankCall(int rank, Open open, worker::v1::ShardCall call,
           std::chrono::system_clock::time_point deadline, CommitGate& gate, CallCancel& cancel,
           prometheus::Counter& sent, prometheus::Counter& received);
  // Withdraws the call if its inputs were not ended, drops what the rank
  // still sends, and waits for the thread.
  ~RankCall();
  RankCall(const RankCall&) = delete;
  RankCall& operator=(const RankCall&) = delete;

  // Queues one input piece; false once the rank's stream failed (the call
  // will not be committed).
  bool Send(attention::v1::TensorChunk chunk);
  // Queues a tensor the rank reads from (or writes into) a client's region
  // itself; false as for Send.
  bool SendRegion(worker::v1::RegionSlice slice);
  // No more inputs. `commit`: this side wants the call committed (every
  // rank's side must); the commit tells the rank whether the batch holds
  // vision tokens, known only once the client's whole stream was read.
  void EndInputs(bool commit, bool batch_has_vision);

  // The rank's answer pieces in order; nullopt once it ended (see Finish).
  std::optional<attention::v1::TensorChunk> Next();
  // Waits for the rank's stream to end: OK, CANCELLED if the call was
  // withdrawn, or the rank's error naming it. Drops answer pieces not read.
  absl::Status Finish();
  // The rank's metrics (the last message of its answer); valid after Finish.
  const attention::v1::RankMetrics& metrics() const { return metrics_; }
  int rank() const { return rank_; }

 private:
  friend class CallCancel;
  void Run();
  // Ends the stream at once (from any thread): the worker sees its call
  // cancelled, and Next and Finish return without waiting for it.
  void CancelStream();

  const int rank_;
  const Open open_;
  const worker::v1::ShardCall call_;
  const std::chrono::system_clock::time_point deadline_;
  CommitGate& gate_;
  CallCancel& cancel_;
  prometheus::Counter& sent_;
  prometheus::Counter& received_;
  server::BoundedQueue<worker::v1::ShardRequest> in_;
  server::BoundedQueue<attention::v1::TensorChunk> out_;
  std::mutex mu_;
  bool ended_ = false;                  // Guarded by mu_.
  bool commit_ = false;                 // Guarded by mu_.
  bool has_vision_ = false;             // Guarded by mu_.
  grpc::ClientContext ctx_;             // TryCancel is safe from any thread.
  absl::Status status_;                 // Written by the thread, read after join.
  attention::v1::RankMetrics metrics_;  // Likewise.
  std::thread thread_;
};

// The ranks of one call. Going out of scope withdraws every rank's call
// before waiting for any of their threads: each waits at the commit gate
// until all the others have arrived.
struct RankCalls {
  std::vector<std::unique_ptr<RankCall>> ranks;

  RankCalls() = default;
  RankCalls(const RankCalls&) = delete;
  RankCalls& operator=(const RankCalls&) = delete;
  ~RankCalls() {
    for (auto& r : ranks) r->EndInputs(false, false);
    ranks.clear();
  }
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_RANK_CALL_H_
