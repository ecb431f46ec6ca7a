#ifndef RINGATTN_SERVER_COORDINATOR_COMMIT_GATE_H_
#define RINGATTN_SERVER_COORDINATOR_COMMIT_GATE_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>

namespace ringattn::coordinator {

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

  // Whether every rank arrived and the call was committed: only then can a
  // rank have started its ring.
  bool committed() {
    std::lock_guard<std::mutex> lock(mu_);
    return waiting_ == 0 && sequence_.has_value();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiting_;
  bool all_sent_ = true;
  std::optional<uint64_t> sequence_;
  std::function<std::optional<uint64_t>()> commit_;
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_COMMIT_GATE_H_
