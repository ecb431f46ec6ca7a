#ifndef RINGATTN_TESTS_SERVER_RING_TESTING_FAKE_NCCL_H_
#define RINGATTN_TESTS_SERVER_RING_TESTING_FAKE_NCCL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "server/ring/transports/nccl_op_batcher.h"

namespace ringattn::ring::testing {

// NCCL's point-to-point rules without a GPU, for ranks as threads:
// - no tags: the k-th send from a to b meets the k-th receive on b from a;
// - groups on one rank run one after another (one communication stream), and
//   an operation only moves while its group is the one running;
// - a send completes only together with its receive (no eager buffering, the
//   strict case), so a lone receive ahead of a lone send on every rank of a
//   ring deadlocks, as it does with NCCL;
// - each message carries its sender's tag, as the NCCL launcher's headers do;
// - a rank that aborts or is killed makes every operation with it fail.
class FakeNcclHub {
 public:
  explicit FakeNcclHub(int size);
  ~FakeNcclHub();

  OpBatcherHooks Hooks(int rank);
  std::unique_ptr<Transport> Connect(int rank);

  // From now on the hub's transports accept device memory (as NCCL's do)
  // and move every message's bytes with `copy` instead of memcpy: for an
  // emulated device whose memory host code may not touch.
  using CopyFn = std::function<void(std::byte* dst, const std::byte* src, size_t bytes)>;
  void CarryDeviceMemory(CopyFn copy);

  // As if the rank's process died.
  void Kill(int rank);
  int aborts(int rank) const;

 private:
  struct Op;
  struct Group;
  class Launched;

  absl::StatusOr<std::unique_ptr<LaunchedGroup>> Launch(int rank, std::span<const P2pOp> ops);
  // Moves every message that can move. Requires mu_.
  void ProgressLocked();
  bool RunningLocked(const Group& g) const;

  mutable std::mutex mu_;
  const int size_;
  std::vector<std::deque<std::shared_ptr<Group>>> streams_;  // Per rank, launch order.
  // sends_[a][b]: sends from a to b not yet matched, in launch order;
  // recvs_[b][a]: receives on b from a. Guarded by mu_.
  std::vector<std::vector<std::deque<Op*>>> sends_, recvs_;
  std::vector<bool> dead_;
  CopyFn copy_;  // Guarded by mu_; empty: memcpy.
  std::vector<int> aborts_;
};

}  // namespace ringattn::ring::testing

#endif  // RINGATTN_TESTS_SERVER_RING_TESTING_FAKE_NCCL_H_
