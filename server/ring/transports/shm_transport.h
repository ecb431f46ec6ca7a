#ifndef RINGATTN_SERVER_RING_TRANSPORTS_SHM_TRANSPORT_H_
#define RINGATTN_SERVER_RING_TRANSPORTS_SHM_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/ring/store.h"
#include "server/ring/transport.h"

// Point-to-point between processes that share POSIX shared memory (workers
// on one host, in one IPC namespace): the K/V exchange at memory speed
// instead of through the TCP loopback.
//
// - Layout: every rank owns one inbox segment with one ring buffer per
//   sender. A message is a 16-byte frame header (tag, bytes) and its bytes,
//   streamed through the ring buffer while it fills, so a message may be any
//   size. Two copies per message (in, out), each by a progress thread of
//   its own side, overlapping.
// - Matching: in posting order per (sender, receiver), like NCCL; the
//   receiver checks each frame's tag and size against what it posted, so a
//   rank that posted out of order fails loudly, naming both tags. The ring
//   posts in the same order on every rank.
// - Waking: a rank that gives another work (bytes written for it, space
//   freed for it) bumps that rank's doorbell, a futex in its inbox.
// - Rendezvous (the ring's store): rank 0 draws a nonce for the segment
//   names; every rank creates its inbox, then maps every peer's and votes
//   whether it could. All ranks see all votes, so they agree: when any rank
//   cannot map a peer (another host or IPC namespace) every rank gets
//   FAILED_PRECONDITION and may fall back to another transport together.
//   The names are unlinked once every rank has mapped them, so nothing is
//   left in /dev/shm after a crash.
// - Failure: Abort sets a flag in this rank's inbox that peers see at once
//   (UNAVAILABLE); a peer whose process is gone is noticed within a
//   fraction of a second; every wait is bounded by its timeout.

namespace ringattn::ring {

struct ShmOptions {
  int rank = 0;
  int size = 1;
  uint64_t generation = 0;                     // Keys the rendezvous.
  absl::Duration timeout = absl::Seconds(60);  // Rendezvous bound.
  size_t channel_bytes = size_t{4} << 20;      // Ring buffer per (sender, receiver).
};

// Every rank of the ring calls it with the same size and generation,
// concurrently. FAILED_PRECONDITION (on every rank) when some rank cannot
// share memory with some other; DEADLINE_EXCEEDED if a rank does not come.
absl::StatusOr<std::unique_ptr<Transport>> ConnectShm(Store& store, const ShmOptions& options);

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_TRANSPORTS_SHM_TRANSPORT_H_
