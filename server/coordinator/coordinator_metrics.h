#ifndef RINGATTN_SERVER_COORDINATOR_COORDINATOR_METRICS_H_
#define RINGATTN_SERVER_COORDINATOR_COORDINATOR_METRICS_H_

#include "prometheus/registry.h"
#include "server/common/service_metrics.h"

namespace ringattn::server {

// What the coordinator exports: the shared service metrics plus whole-call
// latency and throughput, the memory budget and the ring's membership.
struct CoordinatorMetrics {
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  ServiceMetrics service;
  PerOp<prometheus::Histogram> call_duration_seconds;
  PerOp<prometheus::Gauge> calls_in_flight;
  PerOp<prometheus::Counter> flops_total;
  PerOp<prometheus::Gauge> achieved_flops_per_second;
  prometheus::Gauge& memory_budget_bytes;
  prometheus::Counter& ring_rebuilds_total;
  prometheus::Gauge& ring_size;
  prometheus::Gauge& workers_registered;
  prometheus::Gauge& workers_up;
};

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COORDINATOR_COORDINATOR_METRICS_H_
