#ifndef RINGATTN_CLIENT_LOCAL_CLUSTER_H_
#define RINGATTN_CLIENT_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ringattn::client {

struct LocalClusterOptions {
  int cp = 4;
  // Directory holding ringattn-coordinator and ringattn-worker; empty: the
  // directory of the running program.
  std::string bin_dir;
  int worker_threads = 1;
  double ring_timeout_seconds = 60;
  std::vector<std::string> coordinator_flags;  // Extra flags, e.g. limits.
  absl::Duration start_timeout = absl::Seconds(60);
};

// One coordinator and cp CPU worker processes on 127.0.0.1 with ephemeral
// ports: for the main job, the integration tests and trying things out.
class LocalCluster {
 public:
  // Starts every process and waits (bounded) until the ring is ready.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  const std::string& address() const { return address_; }
  pid_t coordinator_pid() const { return coordinator_; }
  const std::vector<pid_t>& worker_pids() const { return workers_; }

  // SIGTERM to every process, then waits (bounded; SIGKILL after). An error
  // if any process did not exit cleanly.
  absl::Status Stop();

 private:
  LocalCluster() = default;

  std::string dir_;
  std::string address_;
  pid_t coordinator_ = -1;
  std::vector<pid_t> workers_;
};

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_LOCAL_CLUSTER_H_
