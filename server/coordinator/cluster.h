#ifndef RINGATTN_SERVER_COORDINATOR_CLUSTER_H_
#define RINGATTN_SERVER_COORDINATOR_CLUSTER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::server {

// The ring's workers as the coordinator sees them: they register (rank =
// order of registration); once cp have, the coordinator tells each to join
// ring generation g + 1, with rendezvous through its own store.
class Cluster {
 public:
  Cluster(int cp, std::string store_address, absl::Duration join_timeout);
  ~Cluster();

  int cp() const { return cp_; }

  // Registers a worker endpoint; the cp-th registration builds the ring.
  absl::Status AddWorker(const std::string& address);

  // Blocks until the ring is built (or `timeout`): UNAVAILABLE if not.
  absl::Status WaitReady(absl::Duration timeout);

  bool ready();
  uint64_t generation();
  // Worker stubs by rank; empty until ready.
  std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> workers();
  std::vector<std::string> addresses();

  // Ring calls are numbered 1, 2, ... per generation; workers run them in
  // this order.
  uint64_t NextSequence();

 private:
  void BuildRing(std::vector<std::string> addresses);

  const int cp_;
  const std::string store_address_;
  const absl::Duration join_timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> addresses_;                                            // Guarded by mu_.
  std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> stubs_;  // Guarded.
  bool ready_ = false;                                                            // Guarded by mu_.
  bool building_ = false;                                                         // Guarded by mu_.
  uint64_t generation_ = 0;                                                       // Guarded by mu_.
  uint64_t sequence_ = 0;                                                         // Guarded by mu_.
  std::string last_error_;                                                        // Guarded by mu_.
  std::thread builder_;
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COORDINATOR_CLUSTER_H_
