#ifndef RINGATTN_SERVER_COORDINATOR_CLUSTER_H_
#define RINGATTN_SERVER_COORDINATOR_CLUSTER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "server/coordinator/coordinator_metrics.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::coordinator {

struct ClusterOptions {
  int cp = 1;
  std::string store_address;   // This coordinator's CoordinatorControl endpoint.
  std::string coordinator_id;  // Random per start (see JoinRingRequest).
  absl::Duration join_timeout = absl::Seconds(60);
  // How often every worker's health is checked, and how long a check may
  // wait for its answer; a worker that fails a check is down until it
  // passes one (or registers again). A hung worker (stopped, or wedged)
  // answers nothing, and its calls in flight fail within one interval plus
  // one timeout: under a second with these defaults.
  absl::Duration health_interval = absl::Milliseconds(200);
  absl::Duration health_timeout = absl::Milliseconds(500);
  std::shared_ptr<grpc::ChannelCredentials> worker_credentials;  // Null: insecure.
  std::string cluster_secret;  // Sent on every call to a worker (wire/cluster_secret.h).
};

// The ring's workers as the coordinator sees them: cp rank slots filled by
// registration. When every slot holds a healthy worker and there is no
// working ring, the cluster builds one: every worker joins generation g + 1
// with rendezvous through the coordinator's store. A ring breaks when one
// of its workers goes down or a ring call fails (the transport aborts on
// error); it is rebuilt as soon as every slot is healthy again.
class Cluster {
 public:
  Cluster(ClusterOptions options, CoordinatorMetrics& metrics);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  int cp() const { return options_.cp; }

  // Registration and heartbeat. `rank` pins the slot (a pod's ordinal);
  // otherwise the worker gets its old slot, a free one, or that of a worker
  // that is down. A new incarnation at a known address is a restart.
  // `shm_host_id`: which shared memory the worker sees (shm_file.h), empty
  // for none. Returns the worker's rank.
  absl::StatusOr<int> Register(const std::string& address, std::optional<int> rank,
                               const std::string& incarnation, const std::string& shm_host_id = "");

  // Blocks until a ring is ready (or `timeout`): UNAVAILABLE, naming the
  // ranks that are missing or down, if not. Returns at once when a worker
  // is down, since no rebuild can happen until it returns.
  absl::Status WaitReady(absl::Duration timeout);

  // A ring call of `generation` failed in a way that leaves the transport
  // aborted: the ring must be rebuilt before the next call.
  void RingFailed(uint64_t generation, const std::string& reason);

  // Health-checks every rank now (bounded), marks those that fail down and
  // names them, e.g. "rank 2 at 10.0.0.7:5000 is down"; empty if all answer.
  std::string CheckRanksNow();

  struct WorkerView {
    std::string address;
    bool up = false;
  };
  struct RingView {
    bool ready = false;
    uint64_t generation = 0;
    // Stubs by rank; empty unless ready.
    std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> stubs;
    std::vector<WorkerView> workers;  // By rank; empty address: slot free.
  };
  RingView View();

  // The ring a call is dispatched to: its generation and workers by rank,
  // taken together so a rebuild between them cannot mix two rings.
  struct Ticket {
    uint64_t generation = 0;
    std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> stubs;
    std::vector<std::string> shm_host_ids;  // By rank, as each registered.
  };
  // UNAVAILABLE when no ring is ready.
  absl::StatusOr<Ticket> NextCall();

  // While it lives, `on_down` is told (e.g. "rank 2 at 10.0.0.7:5000 is
  // down") each time a rank is marked down, so that calls in flight fail at
  // once rather than wait on the rank. It runs under the cluster's lock and
  // must not call back into the cluster.
  class DownWatch {
   public:
    DownWatch() = default;
    DownWatch(DownWatch&& other) noexcept
        : cluster_(std::exchange(other.cluster_, nullptr)), id_(other.id_) {}
    DownWatch& operator=(DownWatch&&) = delete;
    ~DownWatch();

   private:
    friend class Cluster;
    DownWatch(Cluster* cluster, uint64_t id) : cluster_(cluster), id_(id) {}
    Cluster* cluster_ = nullptr;
    uint64_t id_ = 0;
  };
  DownWatch WatchDown(std::function<void(const std::string&)> on_down);

  // The next number in `generation`'s global call order (1, 2, ...; workers
  // run calls in it), given when a call is committed. UNAVAILABLE if that
  // ring is gone.
  absl::StatusOr<uint64_t> Commit(uint64_t generation);

 private:
  struct Slot {
    std::string address;
    std::string incarnation;
    std::string shm_host_id;
    std::shared_ptr<grpc::Channel> channel;
    std::shared_ptr<worker::v1::WorkerService::StubInterface> stub;
    bool up = false;
  };

  // Starts a build if one is due (requires mu_).
  void MaybeBuildLocked();
  void BuildRing(uint64_t generation, std::vector<Slot> slots);
  void Monitor();
  // Health-checks every rank's channel at once (bounded by `timeout`):
  // whether each answered SERVING, by rank (a null channel: false).
  static std::vector<bool> ProbeAll(const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                                    absl::Duration timeout);
  void PublishLocked();  // Gauges from the slots (requires mu_).
  // Marks rank `r` down (requires mu_): the ring breaks, and a build that
  // waits for the rank is called off rather than left to its timeout.
  void MarkDownLocked(int r, const std::string& why);

  const ClusterOptions options_;
  CoordinatorMetrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;                       // By rank. Guarded by mu_.
  bool ready_ = false;                            // A ring of generation_ is up. Guarded by mu_.
  bool building_ = false;                         // Guarded by mu_.
  bool stopping_ = false;                         // Guarded by mu_.
  uint64_t generation_ = 0;                       // Guarded by mu_.
  uint64_t sequence_ = 0;                         // Guarded by mu_.
  absl::Time next_build_ = absl::InfinitePast();  // Backoff after a failed build. Guarded.
  std::string last_error_;                        // Guarded by mu_.
  std::vector<std::shared_ptr<worker::v1::WorkerService::StubInterface>> ring_;  // Guarded.
  std::vector<grpc::ClientContext*> joining_;  // JoinRing calls of the build. Guarded by mu_.
  std::map<uint64_t, std::function<void(const std::string&)>> down_watches_;  // Guarded by mu_.
  uint64_t next_watch_ = 0;                                                   // Guarded by mu_.
  std::thread builder_;
  std::thread monitor_;
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_CLUSTER_H_
