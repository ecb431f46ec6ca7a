#ifndef RINGATTN_SERVER_COMMON_METRICS_SERVER_H_
#define RINGATTN_SERVER_COMMON_METRICS_SERVER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace ringattn::server {

// The fields of /proc/<pid>/stat the process metrics need, in the kernel's
// units (clock ticks, bytes, pages).
struct ProcStat {
  double utime_ticks = 0;
  double stime_ticks = 0;
  double start_ticks = 0;  // After boot.
  double vsize_bytes = 0;
  double rss_pages = 0;
};

// Parses the text of /proc/<pid>/stat; nullopt if it is not one. The
// command name may hold spaces and parentheses, so fields are counted
// from its last ')'.
std::optional<ProcStat> ParseProcStat(absl::string_view text);

// The standard process metrics every Prometheus client library exports
// (prometheus-cpp has none), read from /proc at each scrape:
// process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds and
// process_start_time_seconds. Dashboards and alerts written for other
// services' process metrics then work unchanged.
class ProcessMetrics final : public prometheus::Collectable {
 public:
  ProcessMetrics();

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  double start_time_seconds_ = 0;  // Fixed for the process's life.
};

// The Prometheus endpoint (GET /metrics) of one daemon, on its own port so
// scraping never competes with gRPC traffic for a connection or a thread.
// Serves the daemon's registry and the process metrics (ProcessMetrics).
class MetricsServer {
 public:
  // Serves `registry` on host:port; port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);

  int port() const { return port_; }

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                std::shared_ptr<prometheus::Registry> registry,
                std::shared_ptr<ProcessMetrics> process, int port)
      : exposer_(std::move(exposer)),
        registry_(std::move(registry)),
        process_(std::move(process)),
        port_(port) {}

  std::unique_ptr<prometheus::Exposer> exposer_;
  // Kept alive: the exposer holds weak_ptrs.
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessMetrics> process_;
  int port_;
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_METRICS_SERVER_H_
