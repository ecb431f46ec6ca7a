#include "server/common/service_metrics.h"

#include <map>

namespace ringattn::server {
namespace {

const char* ChannelName(Channel c) {
  switch (c) {
    case Channel::kApi:
      return "api";
    case Channel::kShard:
      return "shard";
    case Channel::kRing:
      return "ring";
  }
  return "unknown";
}

prometheus::Gauge& SingleGauge(prometheus::Registry& registry, const std::string& name,
                               const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

ServiceMetrics::ServiceMetrics(prometheus::Registry& registry, Role role,
                               const std::string& backend)
    : sessions_open(SingleGauge(registry, "ringattn_sessions_open",
                                "Forward sessions whose state is held for backward.")),
      memory_held_bytes(SingleGauge(registry, "ringattn_memory_held_bytes",
                                    "Bytes of session state held for backward.")),
      ring_generation(SingleGauge(registry, "ringattn_ring_generation",
                                  "Generation of the current ring; 0 before the first ring.")),
      requests_(prometheus::BuildCounter()
                    .Name("ringattn_requests_total")
                    .Help("API calls handled (attention work, not control traffic), by method "
                          "and status code.")
                    .Register(registry)),
      control_requests_(prometheus::BuildCounter()
                            .Name("ringattn_control_requests_total")
                            .Help("Control-plane calls handled (registration heartbeats, store, "
                                  "JoinRing), by method and status code.")
                            .Register(registry)),
      received_(prometheus::BuildCounter()
                    .Name("ringattn_received_bytes_total")
                    .Help("Tensor bytes received, by channel (api, shard, ring).")
                    .Register(registry)),
      sent_(prometheus::BuildCounter()
                .Name("ringattn_sent_bytes_total")
                .Help("Tensor bytes sent, by channel (api, shard, ring).")
                .Register(registry)) {
  std::map<std::string, std::string> info = {
      {"version", RINGATTN_VERSION},
      {"role", role == Role::kCoordinator ? "coordinator" : "worker"}};
  if (!backend.empty()) info["backend"] = backend;
  prometheus::BuildGauge()
      .Name("ringattn_build_info")
      .Help(
          "Always 1; labels name the version, the daemon's role and (workers) the compute "
          "backend.")
      .Register(registry)
      .Add(info)
      .Set(1);
  // Present from the first scrape, so rate() has a zero to start from.
  for (Channel c : {Channel::kApi, Channel::kShard, Channel::kRing}) {
    received_bytes(c);
    sent_bytes(c);
  }
}

void ServiceMetrics::CountRequest(Plane plane, const std::string& method, const std::string& code) {
  (plane == Plane::kApi ? requests_ : control_requests_)
      .Add({{"method", method}, {"code", code}})
      .Increment();
}

prometheus::Counter& ServiceMetrics::received_bytes(Channel c) const {
  return received_.Add({{"channel", ChannelName(c)}});
}

prometheus::Counter& ServiceMetrics::sent_bytes(Channel c) const {
  return sent_.Add({{"channel", ChannelName(c)}});
}

prometheus::Histogram::BucketBoundaries DoublingBuckets(double first, int count) {
  prometheus::Histogram::BucketBoundaries b;
  double v = first;
  for (int i = 0; i < count; ++i, v *= 2) b.push_back(v);
  return b;
}

}  // namespace ringattn::server
