#ifndef RINGATTN_SERVER_COORDINATOR_COORDINATOR_METRICS_H_
#define RINGATTN_SERVER_COORDINATOR_COORDINATOR_METRICS_H_

#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "server/batch/shard_layout.h"
#include "server/common/service_metrics.h"

namespace ringattn::coordinator {

// What the coordinator exports: the shared service metrics plus whole-call
// latency and throughput, the memory budget and the ring's membership.
struct CoordinatorMetrics {
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  server::ServiceMetrics service;
  server::PerOp<prometheus::Histogram> call_duration_seconds;
  server::PerOp<prometheus::Gauge> calls_in_flight;
  server::PerOp<prometheus::Counter> flops_total;
  server::PerOp<prometheus::Gauge> achieved_flops_per_second;
  prometheus::Gauge& memory_budget_bytes;
  prometheus::Counter& ring_rebuilds_total;
  prometheus::Gauge& ring_size;
  prometheus::Gauge& workers_registered;
  prometheus::Gauge& workers_up;
  // Completed forward calls by the shard layout they ran with (a session's
  // backward runs with its forward's).
  prometheus::Family<prometheus::Counter>& layout_calls_total;
  prometheus::Counter& layout_contiguous_calls;
  prometheus::Counter& layout_zigzag_calls;

  prometheus::Counter& LayoutCalls(batch::LayoutKind kind) {
    return kind == batch::LayoutKind::kZigzag ? layout_zigzag_calls : layout_contiguous_calls;
  }
};

}  // namespace ringattn::coordinator

#endif  // RINGATTN_SERVER_COORDINATOR_COORDINATOR_METRICS_H_
