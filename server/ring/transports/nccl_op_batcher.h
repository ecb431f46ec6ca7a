#ifndef RINGATTN_SERVER_RING_TRANSPORTS_NCCL_OP_BATCHER_H_
#define RINGATTN_SERVER_RING_TRANSPORTS_NCCL_OP_BATCHER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/ring/transport.h"

// The part of the NCCL transport that needs no GPU: queueing posted
// point-to-point operations, issuing them as groups, bounded waits, tag
// checks and abort. The launcher that really talks to NCCL is injected, so
// all of this is tested on the CPU (tests/server/ring/nccl_op_batcher_test.cc)
// against a fake with NCCL's matching rules.
//
// Why groups: NCCL matches a send to a receive by posting order per peer, and
// a send blocks until its receive is posted on the peer. A ring in which
// every rank issues a lone receive and then a lone send deadlocks: each
// receive waits for a send that is never issued. Issued together in one
// ncclGroupStart/End group, they progress together.
//
// Why tags still: NCCL ignores them, so the batcher sends each operation's
// tag in a small header just before it (the launcher's job) and compares, on
// completion, the tag that arrived with the one the receive was posted with.
// A rank that posted in a different order from its peer gets an error naming
// both tags instead of silently taking one message for another.

namespace ringattn::ring {

struct P2pOp {
  enum class Kind : uint8_t { kSend, kRecv };
  Kind kind = Kind::kSend;
  int peer = 0;
  uint64_t tag = 0;
  std::byte* data = nullptr;  // Host or device memory; only read by sends.
  size_t size = 0;
};

// A group issued to the communicator, polled until it is done.
class LaunchedGroup {
 public:
  virtual ~LaunchedGroup() = default;
  // True once every operation of the group has completed (received bytes are
  // in place); false while any is in flight; an error if the transport
  // failed (a peer is gone, the communicator reported an error).
  virtual absl::StatusOr<bool> Poll() = 0;
  // Once Poll returned true: the tag that arrived with receive `index` (the
  // index of the operation in the launched span).
  virtual uint64_t ReceivedTag(size_t index) const = 0;
};

struct OpBatcherHooks {
  // Issues `ops` as one group, in order. Called with no other call of the
  // hooks in progress. On error, nothing it issued may still be waiting.
  std::function<absl::StatusOr<std::unique_ptr<LaunchedGroup>>(std::span<const P2pOp> ops)> launch;
  // Tears the communicator down so that peers fail fast (ncclCommAbort).
  std::function<void()> abort;
  // Longest sleep between polls; the first polls only yield, for latency.
  absl::Duration max_poll_interval = absl::Microseconds(200);
};

// Thread-safe. Operations posted since the last flush form the next group;
// Flush issues it, and so does the first Wait on any of its operations.
// Groups are issued in posting order, which is what NCCL matches by.
class OpBatcher {
 public:
  explicit OpBatcher(OpBatcherHooks hooks);
  ~OpBatcher();
  OpBatcher(const OpBatcher&) = delete;
  OpBatcher& operator=(const OpBatcher&) = delete;

  // Queues `op`; nothing is issued yet. The op's memory must stay valid until
  // its Wait returns. The PendingOp may outlive the batcher (its Wait then
  // fails with UNAVAILABLE).
  absl::StatusOr<std::unique_ptr<PendingOp>> Post(const P2pOp& op);

  // Issues the queued operations as one group (no-op when none are queued).
  absl::Status Flush();

  // Calls the abort hook once and fails every later call with UNAVAILABLE.
  void Abort(absl::string_view why);

  // Aborts if any group is still in flight, then drops every launched group
  // and the hooks: the communicator may be freed after this returns.
  void Shutdown();

  size_t queued() const;           // Posted, not issued yet.
  size_t groups_launched() const;  // Issued so far.

  struct State;  // Shared with the PendingOps it hands out.

 private:
  std::shared_ptr<State> state_;
};

// A Transport over an OpBatcher: Send and Recv post, Flush issues, Abort
// aborts. The NCCL transport is this with NCCL's launcher; the tests run the
// ring over it with a fake one.
class BatchedTransport : public Transport {
 public:
  // device_memory: the launcher moves device memory in place (NCCL does).
  BatchedTransport(int rank, int size, OpBatcherHooks hooks, bool device_memory = false);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::StatusOr<std::unique_ptr<PendingOp>> Send(int peer, uint64_t tag,
                                                  std::span<const std::byte> data) override;
  absl::StatusOr<std::unique_ptr<PendingOp>> Recv(int peer, uint64_t tag,
                                                  std::span<std::byte> data) override;
  absl::Status Flush() override { return batcher_.Flush(); }
  bool accepts_device_memory() const override { return device_memory_; }
  void Abort() override;

 protected:
  // A subclass that owns what the hooks use shuts this down first in its
  // destructor.
  OpBatcher& batcher() { return batcher_; }

 private:
  absl::StatusOr<std::unique_ptr<PendingOp>> Post(P2pOp::Kind kind, int peer, uint64_t tag,
                                                  std::byte* data, size_t size);

  const int rank_;
  const int size_;
  const bool device_memory_;
  OpBatcher batcher_;
};

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_TRANSPORTS_NCCL_OP_BATCHER_H_
