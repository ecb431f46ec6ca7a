#ifndef RINGATTN_SERVER_COMMON_METRICS_SERVER_H_
#define RINGATTN_SERVER_COMMON_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace ringattn::server {

// The Prometheus endpoint (GET /metrics) of one daemon, on its own port so
// scraping never competes with gRPC traffic for a connection or a thread.
class MetricsServer {
 public:
  // Serves `registry` on host:port; port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);

  int port() const { return port_; }

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                std::shared_ptr<prometheus::Registry> registry, int port)
      : exposer_(std::move(exposer)), registry_(std::move(registry)), port_(port) {}

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;  // Kept alive: the exposer holds a weak_ptr.
  int port_;
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_METRICS_SERVER_H_
