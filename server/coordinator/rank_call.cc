#include "server/coordinator/rank_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/wire/grpc_status.h"

namespace ringattn::coordinator {
namespace {

// Pieces in flight per direction and rank: enough to keep both streams busy,
// few enough that a call holds a few MiB per rank in the coordinator.
constexpr size_t kQueuedPieces = 4;

// After inputs that lie in regions: whether the worker read and checked
// them (worker.v1 Seal).
bool Seal(ShardStream& stream) {
  worker::v1::ShardRequest seal;
  seal.mutable_seal();
  worker::v1::ShardResponse resp;
  // A worker that refused its slices ends its stream with why: the call is
  // withdrawn from every rank at the gate, and that status reports it. No
  // cancel: the others have nothing running yet, and must not hide it.
  return stream.Write(seal) && stream.Read(&resp) && resp.has_ready();
}

}  // namespace

void CallCancel::Cancel(RankCall* failed) {
  std::function<void()> on_cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    for (RankCall* r : ranks_) {
      if (r != failed) r->CancelStream();
    }
    on_cancel = std::move(on_cancel_);
  }
  if (on_cancel) on_cancel();
}

bool CallCancel::cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

void CallCancel::Add(RankCall* rank) {
  std::lock_guard<std::mutex> lock(mu_);
  ranks_.push_back(rank);
  if (cancelled_) rank->CancelStream();
}

void CallCancel::Remove(RankCall* rank) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase(ranks_, rank);
}

RankCall::RankCall(int rank, Open open, worker::v1::ShardCall call,
                   std::chrono::system_clock::time_point deadline, CommitGate& gate,
                   CallCancel& cancel, prometheus::Counter& sent, prometheus::Counter& received)
    : rank_(rank),
      open_(std::move(open)),
      call_(std::move(call)),
      deadline_(deadline),
      gate_(gate),
      cancel_(cancel),
      sent_(sent),
      received_(received),
      in_(kQueuedPieces),
      out_(kQueuedPieces) {
  ctx_.set_deadline(deadline_);
  cancel_.Add(this);
  thread_ = std::thread([this] { Run(); });
}

RankCall::~RankCall() {
  // Before anything goes: a failing rank's thread may cancel this one.
  cancel_.Remove(this);
  EndInputs(false, false);
  out_.Cancel();
  if (thread_.joinable()) thread_.join();
}

bool RankCall::Send(attention::v1::TensorChunk chunk) {
  worker::v1::ShardRequest r;
  *r.mutable_chunk() = std::move(chunk);
  return in_.Push(std::move(r));
}

bool RankCall::SendRegion(worker::v1::RegionSlice slice) {
  worker::v1::ShardRequest r;
  *r.mutable_region() = std::move(slice);
  return in_.Push(std::move(r));
}

void RankCall::CancelStream() {
  ctx_.TryCancel();
  in_.Cancel();
}

void RankCall::EndInputs(bool commit, bool batch_has_vision) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    ended_ = true;
    commit_ = commit;
    has_vision_ = batch_has_vision;
  }
  in_.Close();
}

std::optional<attention::v1::TensorChunk> RankCall::Next() { return out_.Pop(); }

absl::Status RankCall::Finish() {
  out_.Cancel();
  if (thread_.joinable()) thread_.join();
  return status_;
}

void RankCall::Run() {
  std::unique_ptr<ShardStream> stream = open_(&ctx_);
  worker::v1::ShardRequest req;
  *req.mutable_call() = call_;
  bool ok = stream->Write(req);
  // A failed write: the producer's Send fails from now on, and every other
  // rank stops waiting for this one's inputs at the commit gate.
  auto failed = [&] {
    ok = false;
    in_.Cancel();
    cancel_.Cancel(this);
  };
  if (!ok) failed();
  bool regions = false;
  while (std::optional<worker::v1::ShardRequest> r = in_.Pop()) {
    if (r->has_chunk()) sent_.Increment(static_cast<double>(r->chunk().data().size()));
    regions |= r->has_region();
    if (!stream->Write(*r)) failed();
  }
  bool commit = false, has_vision = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commit = ended_ && commit_;
    has_vision = has_vision_;
  }
  if (ok && commit && regions) ok = Seal(*stream);
  const std::optional<uint64_t> sequence = gate_.Arrive(ok && commit);
  if (!sequence) {
    // A stream that failed has its own status (a worker gone mid-upload is
    // UNAVAILABLE, not a withdrawal); a healthy one is cancelled.
    if (ok) ctx_.TryCancel();
    const grpc::Status s = stream->Finish();
    status_ = s.ok() || s.error_code() == grpc::StatusCode::CANCELLED
                  ? absl::CancelledError("the call was withdrawn before the ring started")
                  : absl::Status(wire::FromGrpc(s).code(),
                                 absl::StrCat("rank ", rank_, ": ", s.error_message()));
    out_.Close();
    return;
  }
  worker::v1::ShardRequest commit_req;
  commit_req.mutable_commit()->set_sequence(*sequence);
  commit_req.mutable_commit()->set_batch_has_vision(has_vision);
  stream->Write(commit_req);
  stream->WritesDone();
  worker::v1::ShardResponse resp;
  while (stream->Read(&resp)) {
    if (resp.has_metrics()) {
      metrics_ = resp.metrics();
    } else if (resp.has_chunk()) {
      received_.Increment(static_cast<double>(resp.chunk().data().size()));
      out_.Push(std::move(*resp.mutable_chunk()));  // Dropped once the reader left.
    }
  }
  const grpc::Status s = stream->Finish();
  if (!s.ok()) {
    const absl::Status st = wire::FromGrpc(s);
    status_ = absl::Status(st.code(), absl::StrCat("rank ", rank_, ": ", st.message()));
    // The other ranks' peers wait on this one in the ring: stop them all.
    cancel_.Cancel(this);
  }
  out_.Close();
}

}  // namespace ringattn::coordinator
