#ifndef RINGATTN_SERVER_RING_TRANSPORT_H_
#define RINGATTN_SERVER_RING_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

// Point-to-point byte transport under the ring. Implementations: in-process
// (threads; tests and TSan), Gloo TCP (CPU processes), NCCL (GPUs).
// Messages are matched by (peer, tag); the ring puts its generation, call
// sequence, step and message kind in the tag, so a late message from an
// earlier ring or call can never be taken for a current one. NCCL has no
// tags: it matches by posting order per peer, and checks the tags instead
// (see nccl_transport.h); the ring posts in the same order on every rank, so
// both rules pair the same messages.

namespace ringattn::ring {

// An operation in flight. Wait must be called (once) before the buffer it
// reads or writes is touched again.
class PendingOp {
 public:
  virtual ~PendingOp() = default;
  // OK when done; DEADLINE_EXCEEDED after `timeout`; UNAVAILABLE if the peer
  // is gone or the transport was aborted.
  virtual absl::Status Wait(absl::Duration timeout) = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Starts sending `data` to `peer`; `data` must stay valid until Wait.
  virtual absl::StatusOr<std::unique_ptr<PendingOp>> Send(int peer, uint64_t tag,
                                                          std::span<const std::byte> data) = 0;
  // Starts receiving exactly data.size() bytes from `peer` into `data`.
  virtual absl::StatusOr<std::unique_ptr<PendingOp>> Recv(int peer, uint64_t tag,
                                                          std::span<std::byte> data) = 0;

  // Starts every operation posted so far. The ring calls it once it has
  // posted a step's sends and receives, before it computes. Transports that
  // start each operation when it is posted do nothing; NCCL issues the posted
  // operations as one group here (a lone receive then a lone send on every
  // rank of a ring would deadlock), or at the first Wait on any of them.
  virtual absl::Status Flush() { return absl::OkStatus(); }

  // True when Send and Recv take device memory of the backend's device in
  // place (NCCL); false when they take host memory only (Gloo, in-process),
  // in which case a ring on a device backend stages each message through
  // host memory (staged_transport.h).
  virtual bool accepts_device_memory() const { return false; }

  // Tears the transport down so that peers blocked on this rank fail fast
  // instead of waiting for their timeout. Every later call fails.
  virtual void Abort() = 0;
};

// Tag layout: generation (16 bits) | sequence (32 bits) | step (12) | kind (4).
enum class MessageKind : uint8_t {
  kForwardKv = 1,
  kBackwardKv = 2,
  kGradAccumulator = 3,
  kGradHome = 4,
};

inline uint64_t MakeTag(uint64_t generation, uint64_t sequence, int step, MessageKind kind) {
  return (generation & 0xFFFFu) << 48 | (sequence & 0xFFFFFFFFu) << 16 |
         (static_cast<uint64_t>(step) & 0xFFFu) << 4 | static_cast<uint64_t>(kind);
}

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_TRANSPORT_H_
