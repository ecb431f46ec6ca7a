#ifndef RINGATTN_SERVER_WORKER_WORKER_METRICS_H_
#define RINGATTN_SERVER_WORKER_WORKER_METRICS_H_

#include "prometheus/registry.h"
#include "server/common/service_metrics.h"
#include "server/ring/ring_attention.h"

namespace ringattn::worker {

// What a worker exports: the shared service metrics plus its ring calls,
// each ring step split into compute and waiting on the ring, and the work
// (allowed pairs) its computed steps did.
struct WorkerMetrics {
  WorkerMetrics(prometheus::Registry& registry, const std::string& backend);

  // Records one finished ring call of this rank.
  void RecordRingCall(server::Op op, const ring::RingStats& stats);

  server::ServiceMetrics service;
  server::PerOp<prometheus::Histogram> shard_call_duration_seconds;
  server::PerOp<prometheus::Histogram> ring_step_compute_seconds;
  server::PerOp<prometheus::Histogram> ring_step_comm_wait_seconds;
  server::PerOp<prometheus::Counter> ring_pairs_computed_total;
  prometheus::Gauge& ring_rank;
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_WORKER_METRICS_H_
