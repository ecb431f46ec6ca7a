#include "server/ring/transports/nccl_op_batcher.h"

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ringattn::ring {
namespace {

std::string Describe(const P2pOp& op) {
  return absl::StrFormat("%s rank %d (tag %#x)",
                         op.kind == P2pOp::Kind::kSend ? "send to" : "receive from", op.peer,
                         op.tag);
}

// Operations issued together; done when all are.
struct Group {
  std::vector<P2pOp> ops;
  std::unique_ptr<LaunchedGroup> launched;  // Set when issued; dropped when finished.
  bool issued = false;
  bool finished = false;
  absl::Status status;  // Once finished.
};

}  // namespace

struct OpBatcher::State {
  mutable std::mutex mu;
  // Everything below is guarded by mu. The hooks are only called with mu
  // held, which is what lets the launcher use the communicator without a
  // lock of its own.
  OpBatcherHooks hooks;
  std::shared_ptr<Group> open;  // Posted, not issued yet.
  std::vector<std::shared_ptr<Group>> in_flight;
  std::optional<std::string> aborted;  // Why, once aborted or shut down.
  size_t launched = 0;

  absl::Status Unavailable() const {
    return absl::UnavailableError(
        absl::StrCat("NCCL transport aborted: ", aborted.value_or("unknown reason")));
  }

  void AbortLocked(std::string why) {
    if (aborted) return;
    aborted = std::move(why);
    if (hooks.abort) hooks.abort();
    for (const std::shared_ptr<Group>& g : in_flight) {
      if (!g->finished) {
        g->finished = true;
        g->status = Unavailable();
      }
    }
  }

  absl::Status FlushLocked() {
    if (aborted) return Unavailable();
    if (!open) return absl::OkStatus();
    std::shared_ptr<Group> g = std::move(open);
    open.reset();
    g->issued = true;
    absl::StatusOr<std::unique_ptr<LaunchedGroup>> l = hooks.launch(g->ops);
    if (!l.ok()) {
      g->finished = true;
      g->status = absl::UnavailableError(
          absl::StrCat("issuing ", g->ops.size(), " NCCL operations: ", l.status().message()));
      AbortLocked(std::string(g->status.message()));
      return g->status;
    }
    g->launched = *std::move(l);
    in_flight.push_back(std::move(g));
    ++launched;
    return absl::OkStatus();
  }

  // Polls `g` once; on completion checks the tags that arrived.
  void PollLocked(Group& g) {
    if (g.finished) return;
    if (!g.launched) {  // Dropped by Shutdown.
      g.finished = true;
      g.status = Unavailable();
      return;
    }
    absl::StatusOr<bool> done = g.launched->Poll();
    if (done.ok() && !*done) return;
    g.finished = true;
    if (!done.ok()) {
      g.status = absl::UnavailableError(done.status().message());
    } else {
      for (size_t i = 0; i < g.ops.size() && g.status.ok(); ++i) {
        const P2pOp& op = g.ops[i];
        if (op.kind != P2pOp::Kind::kRecv) continue;
        if (const uint64_t got = g.launched->ReceivedTag(i); got != op.tag) {
          g.status = absl::InternalError(absl::StrFormat(
              "%s: the message that arrived has tag %#x; the ranks posted their operations in "
              "different orders",
              Describe(op), got));
        }
      }
    }
    // Abort before dropping the group: a launcher may wait for its device
    // work to drain, which only an aborted communicator guarantees.
    if (!g.status.ok()) AbortLocked(std::string(g.status.message()));
    g.launched.reset();  // Frees its staging buffers.
    std::erase_if(in_flight, [&](const std::shared_ptr<Group>& p) { return p.get() == &g; });
  }
};

namespace {

class BatchedOp : public PendingOp {
 public:
  BatchedOp(std::shared_ptr<OpBatcher::State> state, std::shared_ptr<Group> group, size_t index)
      : state_(std::move(state)), group_(std::move(group)), index_(index) {}

  absl::Status Wait(absl::Duration timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    std::unique_lock<std::mutex> lock(state_->mu);
    if (result_) return *result_;
    const P2pOp op = group_->ops[index_];
    if (!group_->issued) {
      if (absl::Status s = state_->FlushLocked(); !s.ok()) return Finish(s, op);
    }
    auto interval = std::chrono::microseconds(0);
    const auto max_interval = absl::ToChronoMicroseconds(state_->hooks.max_poll_interval);
    for (int polls = 0; !group_->finished; ++polls) {
      state_->PollLocked(*group_);
      if (group_->finished) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        const std::string why =
            absl::StrCat(Describe(op), " not done after ", absl::FormatDuration(timeout));
        state_->AbortLocked(why);
        return Finish(absl::DeadlineExceededError(
                          absl::StrCat("NCCL ", why, "; communicator aborted so peers fail fast")),
                      op);
      }
      lock.unlock();
      // Yield first (a GPU exchange takes microseconds), then back off.
      if (polls < 64) {
        std::this_thread::yield();
      } else {
        interval = std::min(max_interval, interval + std::chrono::microseconds(10));
        const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
            deadline - std::chrono::steady_clock::now());
        std::this_thread::sleep_for(std::min(interval, left));
      }
      lock.lock();
    }
    return Finish(group_->status, op);
  }

 private:
  absl::Status Finish(const absl::Status& s, const P2pOp& op) {
    if (s.ok() || absl::StrContains(s.message(), Describe(op))) {
      result_ = s;
    } else {
      result_ = absl::Status(s.code(), absl::StrCat(Describe(op), ": ", s.message()));
    }
    return *result_;
  }

  std::shared_ptr<OpBatcher::State> state_;
  std::shared_ptr<Group> group_;
  size_t index_;
  std::optional<absl::Status> result_;
};

}  // namespace

OpBatcher::OpBatcher(OpBatcherHooks hooks) : state_(std::make_shared<State>()) {
  state_->hooks = std::move(hooks);
}

OpBatcher::~OpBatcher() { Shutdown(); }

absl::StatusOr<std::unique_ptr<PendingOp>> OpBatcher::Post(const P2pOp& op) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->aborted) return state_->Unavailable();
  if (!state_->open) state_->open = std::make_shared<Group>();
  state_->open->ops.push_back(op);
  return std::unique_ptr<PendingOp>(
      std::make_unique<BatchedOp>(state_, state_->open, state_->open->ops.size() - 1));
}

absl::Status OpBatcher::Flush() {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->FlushLocked();
}

void OpBatcher::Abort(absl::string_view why) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->AbortLocked(std::string(why));
}

void OpBatcher::Shutdown() {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!state_->in_flight.empty()) {
    state_->AbortLocked("the transport was closed with operations in flight");
  }
  for (const std::shared_ptr<Group>& g : state_->in_flight) g->launched.reset();
  state_->in_flight.clear();
  if (state_->open) {
    // Never issued: nothing on the device refers to them.
    state_->open->issued = state_->open->finished = true;
    state_->open->status = absl::UnavailableError("the transport was closed before it was issued");
    state_->open.reset();
  }
  if (!state_->aborted) state_->aborted = "the transport was closed";
  state_->hooks = {};
}

size_t OpBatcher::queued() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->open ? state_->open->ops.size() : 0;
}

size_t OpBatcher::groups_launched() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->launched;
}

BatchedTransport::BatchedTransport(int rank, int size, OpBatcherHooks hooks, bool device_memory)
    : rank_(rank), size_(size), device_memory_(device_memory), batcher_(std::move(hooks)) {}

absl::StatusOr<std::unique_ptr<PendingOp>> BatchedTransport::Send(int peer, uint64_t tag,
                                                                  std::span<const std::byte> data) {
  // Sends only read; P2pOp has one pointer type for both directions.
  return Post(P2pOp::Kind::kSend, peer, tag, const_cast<std::byte*>(data.data()), data.size());
}

absl::StatusOr<std::unique_ptr<PendingOp>> BatchedTransport::Recv(int peer, uint64_t tag,
                                                                  std::span<std::byte> data) {
  return Post(P2pOp::Kind::kRecv, peer, tag, data.data(), data.size());
}

absl::StatusOr<std::unique_ptr<PendingOp>> BatchedTransport::Post(P2pOp::Kind kind, int peer,
                                                                  uint64_t tag, std::byte* data,
                                                                  size_t size) {
  if (peer < 0 || peer >= size_) return absl::InvalidArgumentError(absl::StrCat("no rank ", peer));
  return batcher_.Post({kind, peer, tag, data, size});
}

void BatchedTransport::Abort() {
  batcher_.Abort(absl::StrCat("rank ", rank_, " aborted the ring"));
}

}  // namespace ringattn::ring
