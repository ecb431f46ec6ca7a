// The coordinator: the public ring-attention API, worker registration and
// the ring's rendezvous store, on one gRPC port.

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/common/flag_help.h"
#include "server/common/malloc_tuning.h"
#include "server/common/metrics_server.h"
#include "server/common/request_metrics.h"
#include "server/common/security_flags.h"
#include "server/common/serve.h"
#include "server/coordinator/attention_service.h"
#include "server/coordinator/cluster.h"
#include "server/coordinator/control_service.h"
#include "server/coordinator/coordinator_metrics.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on (0.0.0.0 for every interface).");
ABSL_FLAG(int, port, 50051, "gRPC port; 0 picks a free one (see --port_file).");
ABSL_FLAG(std::string, advertise_host, "127.0.0.1",
          "Host name workers use to reach this coordinator's store.");
ABSL_FLAG(std::string, port_file, "", "Write the bound port to this file once serving.");
ABSL_FLAG(int, cp, 4, "Workers in the ring (context-parallel ranks).");
ABSL_FLAG(int64_t, max_call_bytes, int64_t{4} << 30, "Largest total tensor bytes of one call.");
ABSL_FLAG(int64_t, memory_budget_bytes, int64_t{16} << 30,
          "Session state the workers may hold in total; over it, calls get RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, session_ttl_seconds, 1800, "Sessions not released expire after this.");
ABSL_FLAG(double, ring_timeout_seconds, 60, "Bound on every ring wait.");
ABSL_FLAG(double, stream_idle_timeout_seconds, 10,
          "A Forward or Backward whose request stream sends nothing this long is cancelled and "
          "its place in the memory budget returned; 0: never.");
ABSL_FLAG(int, max_sessions_per_client, 64,
          "Sessions one client (token or certificate name, else host) may hold open; 0: no "
          "limit. Over it, forward gets RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_client_memory_bytes, 0,
          "Session state one client may hold; 0: only --memory_budget_bytes applies.");
ABSL_FLAG(bool, shm_regions, true,
          "Let clients on this host register shared-memory regions and name tensors in them "
          "instead of streaming them.");
ABSL_FLAG(int, max_regions_per_client, 64, "Shared-memory regions one client may hold.");
ABSL_FLAG(int, metrics_port, 9464,
          "Prometheus /metrics port (on --host); 0 picks a free one, -1 turns it off.");
ABSL_FLAG(std::string, metrics_port_file, "", "Write the bound metrics port to this file.");
ABSL_FLAG(double, health_interval_seconds, 0.2,
          "How often the coordinator checks each worker's health.");
ABSL_FLAG(double, health_timeout_seconds, 0.5,
          "How long a health check waits for a worker's answer; a worker that does not answer "
          "in time is down, and its calls in flight fail at once.");
ABSL_FLAG(std::string, auth_token_file, "",
          "Client tokens of the public API, one a line, 'token' or 'name:token' (the name is the "
          "client's identity); callers without one get UNAUTHENTICATED. Needs TLS.");

namespace {

constexpr char kUsage[] =
    "ringattn-coordinator: accepts attention calls over gRPC, shards them across the ring's\n"
    "workers and streams the results back.\n"
    "\n"
    "usage: ringattn-coordinator --cp=N [--port=P] [flags]";

// What --help lists: every flag of this file and of server/common's
// security flags, and nothing linked in from libraries.
const std::vector<ringattn::server::FlagGroup>& FlagGroups() {
  static const auto* groups = new std::vector<ringattn::server::FlagGroup>{
      {"Serving", {"cp", "host", "port", "port_file", "advertise_host", "shm_regions"}},
      {"Limits",
       {"max_call_bytes", "memory_budget_bytes", "max_sessions_per_client",
        "max_client_memory_bytes", "max_regions_per_client", "session_ttl_seconds",
        "ring_timeout_seconds", "stream_idle_timeout_seconds", "health_interval_seconds",
        "health_timeout_seconds"}},
      {"Metrics", {"metrics_port", "metrics_port_file"}},
      {"Security",
       {"tls_cert_file", "tls_key_file", "tls_ca_file", "tls_require_client_cert",
        "auth_token_file", "cluster_token_file"}},
  };
  return *groups;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (ringattn::server::HelpRequested(argc, argv)) {
    std::fputs(ringattn::server::FlagHelp(kUsage, FlagGroups()).c_str(), stdout);
    return 0;
  }
  absl::ParseCommandLine(argc, argv);
  using namespace ringattn::coordinator;  // NOLINT(google-build-using-namespace)
  namespace server = ringattn::server;
  server::BlockShutdownSignals();
  server::TuneMallocForLargeBuffers();
  ringattn::wire::SecurityOptions security_options = server::SecurityOptionsFromFlags();
  security_options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  absl::StatusOr<server::DaemonSecurity> security = server::LoadDaemonSecurity(security_options);
  if (!security.ok()) {
    std::fprintf(stderr, "error: %s\n", security.status().ToString().c_str());
    return 2;
  }
  const int cp = absl::GetFlag(FLAGS_cp);
  if (cp < 1) {
    std::fprintf(stderr, "error: --cp must be >= 1\n");
    return 2;
  }
  if (!(absl::GetFlag(FLAGS_health_interval_seconds) > 0) ||
      !(absl::GetFlag(FLAGS_health_timeout_seconds) > 0)) {
    std::fprintf(stderr,
                 "error: --health_interval_seconds and --health_timeout_seconds must be > 0\n");
    return 2;
  }
  CoordinatorOptions options;
  options.max_call_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_max_call_bytes));
  options.memory_budget_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_memory_budget_bytes));
  options.session_ttl = absl::Seconds(absl::GetFlag(FLAGS_session_ttl_seconds));
  options.ring_timeout = absl::Seconds(absl::GetFlag(FLAGS_ring_timeout_seconds));
  options.stream_idle_timeout =
      absl::Seconds(std::max(absl::GetFlag(FLAGS_stream_idle_timeout_seconds), 0.0));
  options.max_sessions_per_client = absl::GetFlag(FLAGS_max_sessions_per_client);
  options.max_client_memory_bytes =
      static_cast<uint64_t>(std::max<int64_t>(absl::GetFlag(FLAGS_max_client_memory_bytes), 0));
  options.shm_regions = absl::GetFlag(FLAGS_shm_regions);
  options.max_regions_per_client = absl::GetFlag(FLAGS_max_regions_per_client);

  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics metrics(*registry);
  std::unique_ptr<server::MetricsServer> metrics_server;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto started = server::MetricsServer::Start(absl::GetFlag(FLAGS_host),
                                                absl::GetFlag(FLAGS_metrics_port), registry);
    if (!started.ok()) {
      std::fprintf(stderr, "error: %s\n", started.status().ToString().c_str());
      return 1;
    }
    metrics_server = *std::move(started);
    std::fprintf(stderr, "coordinator: metrics on %s:%d/metrics\n",
                 absl::GetFlag(FLAGS_host).c_str(), metrics_server->port());
    server::WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), metrics_server->port());
  }

  std::random_device rd;
  const std::string coordinator_id = absl::StrFormat("%08x%08x", rd(), rd());
  // The store address needs the port, which is known only once serving, so
  // the cluster is told it after the server starts.
  std::unique_ptr<Cluster> cluster;
  std::string store_address;
  auto make_cluster = [&](int port) {
    // Before anything serves: the secret is needed by the first call.
    if (absl::Status s = server::ResolveClusterSecret(*security, /*coordinator=*/true, port,
                                                      absl::ZeroDuration());
        !s.ok()) {
      return s;
    }
    store_address = absl::StrCat(absl::GetFlag(FLAGS_advertise_host), ":", port);
    ClusterOptions cluster_options;
    cluster_options.cp = cp;
    cluster_options.store_address = store_address;
    cluster_options.worker_credentials = security->peer_credentials;
    cluster_options.cluster_secret = security->peer.cluster_secret;
    cluster_options.coordinator_id = coordinator_id;
    cluster_options.join_timeout = options.ring_timeout;
    cluster_options.health_interval = absl::Seconds(absl::GetFlag(FLAGS_health_interval_seconds));
    cluster_options.health_timeout = absl::Seconds(absl::GetFlag(FLAGS_health_timeout_seconds));
    cluster = std::make_unique<Cluster>(cluster_options, metrics);
    return absl::OkStatus();
  };
  const int asked = absl::GetFlag(FLAGS_port);
  absl::Status made = absl::OkStatus();
  if (asked != 0) made = make_cluster(asked);
  // With port 0, bind first to learn the port, then build the services.
  if (asked == 0) {
    auto probe = server::StartServer(absl::GetFlag(FLAGS_host), 0, {});
    if (!probe.ok()) {
      std::fprintf(stderr, "error: %s\n", probe.status().ToString().c_str());
      return 1;
    }
    const int port = probe->port;
    probe->server->Shutdown();
    made = make_cluster(port);
  }
  if (!made.ok()) {
    std::fprintf(stderr, "error: cluster secret: %s\n", made.ToString().c_str());
    return 1;
  }
  ControlServiceImpl control(*cluster, coordinator_id, security->peer.cluster_secret);
  AttentionServiceImpl attention(*cluster, options, metrics);
  const int port = std::stoi(store_address.substr(store_address.rfind(':') + 1));
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(server::RequestCounter(metrics.service));
  auto started = server::StartServer(absl::GetFlag(FLAGS_host), port, {&attention, &control},
                                     std::move(interceptors), security->server);
  if (!started.ok()) {
    std::fprintf(stderr, "error: %s\n", started.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "coordinator: serving on %s:%d, waiting for %d workers\n",
               absl::GetFlag(FLAGS_host).c_str(), started->port, cp);
  server::WritePortFile(absl::GetFlag(FLAGS_port_file), started->port);
  const int sig = server::WaitForShutdownSignal();
  std::fprintf(stderr, "coordinator: signal %d, draining in-flight calls\n", sig);
  started->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return 0;
}
