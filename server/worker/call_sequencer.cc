#include "server/worker/call_sequencer.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace ringattn::worker {

void CallSequencer::Reset(uint64_t generation) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_ = generation;
    next_ = 1;
    done_early_.clear();
  }
  cv_.notify_all();
}

absl::Status CallSequencer::WaitTurn(uint64_t generation, uint64_t sequence,
                                     absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (generation == generation_ && sequence < next_) {
    // Messages carry no call numbers: they reach the public API, and a
    // number would tell a caller where the ring's sequence stands.
    return absl::FailedPreconditionError(
        "ring call arrived after a later call ran (stale or replayed)");
  }
  const bool turn = cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                                 [&] { return generation != generation_ || next_ == sequence; });
  if (generation != generation_) {
    return absl::UnavailableError(absl::StrCat("ring call of generation ", generation,
                                               " found generation ", generation_,
                                               "; the ring was rebuilt"));
  }
  if (!turn) {
    return absl::DeadlineExceededError("ring call waited too long for the calls ordered before it");
  }
  return absl::OkStatus();
}

void CallSequencer::Done(uint64_t generation, uint64_t sequence) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (generation != generation_) return;
    if (sequence > next_) done_early_.insert(sequence);
    if (sequence == next_) {
      ++next_;
      while (done_early_.erase(next_) > 0) ++next_;
    }
  }
  cv_.notify_all();
}

}  // namespace ringattn::worker
