#ifndef RINGATTN_CLIENT_LOCAL_CLUSTER_H_
#define RINGATTN_CLIENT_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/wire/security.h"

namespace ringattn::client {

struct LocalClusterOptions {
  int cp = 4;
  // Directory holding ringattn-coordinator and ringattn-worker; empty: the
  // directory of the running program.
  std::string bin_dir;
  int worker_threads = 1;
  double ring_timeout_seconds = 60;
  std::vector<std::string> coordinator_flags;                 // Extra flags, e.g. limits.
  std::vector<std::string> worker_flags;                      // Extra flags for every worker.
  std::map<int, std::vector<std::string>> rank_worker_flags;  // And for one rank's.
  absl::Duration start_timeout = absl::Seconds(60);
  // TLS and tokens (the daemons' flags of the same names), the same files for
  // every daemon. The launcher's own calls show tls_cert_file as client
  // certificate and send the first token of auth_token_file.
  std::string tls_cert_file, tls_key_file, tls_ca_file;
  bool tls_require_client_cert = true;
  std::string auth_token_file;     // The coordinator's client tokens.
  std::string cluster_token_file;  // Shared by the coordinator and the workers.
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
  // How the launcher reaches the coordinator (see the options' TLS files).
  const wire::ChannelSecurity& client_security() const { return client_security_; }
  pid_t coordinator_pid() const { return coordinator_; }
  const std::vector<pid_t>& worker_pids() const { return workers_; }
  // host:port of each daemon's Prometheus endpoint.
  const std::string& coordinator_metrics_address() const { return coordinator_metrics_; }
  std::vector<std::string> worker_metrics_addresses() const;

  // Fault injection for tests: SIGKILL a worker (reaped), and start a fresh
  // process for its rank (it registers and the ring is rebuilt).
  absl::Status KillWorker(int rank);
  absl::Status StartWorker(int rank);
  // SIGKILL the coordinator and start a new one on the same port; the
  // workers re-register by their heartbeat. Waits (bounded) for the ring.
  absl::Status RestartCoordinator();
  // Waits (bounded by the start timeout) until the ring is ready.
  absl::Status WaitReady();

  // SIGTERM to every process, then waits (bounded; SIGKILL after). An error
  // if any process did not exit cleanly.
  absl::Status Stop();

 private:
  LocalCluster() = default;
  absl::Status StartCoordinator(int port);

  LocalClusterOptions options_;
  std::string bin_;
  std::string dir_;
  std::string address_;
  std::string coordinator_metrics_;
  wire::ChannelSecurity client_security_;
  pid_t coordinator_ = -1;
  std::vector<pid_t> workers_;
};

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_LOCAL_CLUSTER_H_
