#ifndef RINGATTN_SERVER_WORKER_CALL_SEQUENCER_H_
#define RINGATTN_SERVER_WORKER_CALL_SEQUENCER_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace ringattn::worker {

// Ring calls must run in the same order on every rank, or two ranks wait on
// each other's different calls. The coordinator numbers calls 1, 2, 3, ...
// per ring generation; each worker runs call n only after call n - 1.
// Every call names its generation, so a call of an old ring still finishing
// after a rebuild cannot move the new ring's order.
class CallSequencer {
 public:
  // Starts `generation`: the next call to run is 1.
  void Reset(uint64_t generation);

  // Blocks until it is `sequence`'s turn. DEADLINE_EXCEEDED after `timeout`
  // (an earlier call never arrived); FAILED_PRECONDITION if the call is
  // from the past; UNAVAILABLE if `generation` is not (or no longer) current.
  absl::Status WaitTurn(uint64_t generation, uint64_t sequence, absl::Duration timeout);

  // Marks `sequence` done (successful or not) so the next call may run.
  // May come before its turn: a call withdrawn before it ran is done
  // without running, and later calls must not wait for it. Ignored for a
  // generation that is not current.
  void Done(uint64_t generation, uint64_t sequence);

 private:
  std::mutex mu_;  // std::mutex: visible to ThreadSanitizer.
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  uint64_t next_ = 1;
  std::set<uint64_t> done_early_;  // Done before their turn; all > next_.
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_CALL_SEQUENCER_H_
