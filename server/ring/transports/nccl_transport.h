#ifndef RINGATTN_SERVER_RING_TRANSPORTS_NCCL_TRANSPORT_H_
#define RINGATTN_SERVER_RING_TRANSPORTS_NCCL_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/ring/store.h"
#include "server/ring/transport.h"

// NCCL point-to-point between GPUs (one rank per GPU, processes or threads).
// No CUDA or NCCL types here: built only where CUDA is (target
// ringattn_ring_nccl), but includable anywhere.
//
// - Rendezvous: rank 0 makes the NCCL unique id and sets it in the ring's
//   store under NcclUniqueIdKey(generation); the others wait for it. In the
//   service that store is the coordinator's, so the coordinator hands the id
//   out. A rebuilt ring has a new generation, so a new id and communicator.
// - The communicator is non-blocking (ncclConfig_t::blocking = 0): creation,
//   group launches and waits are polled against deadlines, never blocked on.
// - Matching: NCCL has no tags and pairs sends and receives by posting order
//   per peer. Operations are queued and issued as one ncclGroupStart/End
//   group at Flush (which the ring calls after posting each step) or at the
//   first Wait on any of them; each carries its tag in an 8-byte header that
//   the receiver checks, so a rank that posted out of order fails loudly.
//   (server/ring/transports/nccl_op_batcher.h has the why and the CPU tests.)
// - Streams: everything runs on a communication stream of its own, so it
//   overlaps work on the compute backend's stream.
// - Buffers: device memory of this rank's GPU is sent and received in place;
//   host memory (what the ring passes today) is staged through pinned host
//   and device buffers, reused across calls: copy-in before the send and
//   copy-out after the receive, on the communication stream.
// - Failure: Wait polls a CUDA event and ncclCommGetAsyncError until done or
//   its timeout; on timeout (DEADLINE_EXCEEDED) or an NCCL error, such as a
//   lost peer (UNAVAILABLE), it calls ncclCommAbort, naming the peer. Abort()
//   is ncclCommAbort too, so the peers fail fast.

namespace ringattn::ring {

struct NcclOptions {
  int rank = 0;
  int size = 1;
  int device = 0;           // CUDA device ordinal, as CUDA_VISIBLE_DEVICES numbers them.
  uint64_t generation = 0;  // Ring generation: keys the unique id.
  absl::Duration timeout = absl::Seconds(60);  // Rendezvous and communicator creation bound.
};

// Visible CUDA devices; 0 without a GPU or a driver (any error counts as none).
int NcclDeviceCount();

// The store key of generation `generation`'s unique id.
std::string NcclUniqueIdKey(uint64_t generation);

// Creates this rank's communicator; every rank of the ring calls it with the
// same size and generation, concurrently. FAILED_PRECONDITION without a
// usable device; DEADLINE_EXCEEDED if the ring does not come up in time.
absl::StatusOr<std::unique_ptr<Transport>> ConnectNccl(Store& store, const NcclOptions& options);

}  // namespace ringattn::ring

#endif  // RINGATTN_SERVER_RING_TRANSPORTS_NCCL_TRANSPORT_H_
