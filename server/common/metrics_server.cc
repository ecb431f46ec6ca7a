#include "server/common/metrics_server.h"

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::server {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry) {
  // civetweb takes "host:port"; an IPv6 literal would need brackets.
  const std::string bind = absl::StrCat(host, ":", port);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // One thread: a scrape is a few kilobytes every few seconds.
    exposer = std::make_unique<prometheus::Exposer>(bind, 1);
  } catch (const std::exception& e) {
    // civetweb reports a bind failure by throwing; the daemons speak Status.
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", bind, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty())
    return absl::InternalError(absl::StrCat("metrics server on ", bind, " has no port"));
  const int bound = ports.front();
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(exposer), std::move(registry), bound));
}

}  // namespace ringattn::server
