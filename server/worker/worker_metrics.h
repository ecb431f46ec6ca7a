#ifndef RINGATTN_SERVER_WORKER_WORKER_METRICS_H_
#define RINGATTN_SERVER_WORKER_WORKER_METRICS_H_

#include <mutex>

#include "kernels/chunk_backend.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
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

  // Publishes the backend's device memory and host<->device traffic (all
  // zero on the CPU backend). Safe from concurrent handlers.
  void RecordBackendMemory(const kernels::BackendMemory& memory);

  server::ServiceMetrics service;
  server::PerOp<prometheus::Histogram> shard_call_duration_seconds;
  server::PerOp<prometheus::Histogram> ring_step_compute_seconds;
  server::PerOp<prometheus::Histogram> ring_step_comm_wait_seconds;
  server::PerOp<prometheus::Counter> ring_pairs_computed_total;
  prometheus::Gauge& ring_rank;
  prometheus::Family<prometheus::Gauge>& device_memory_bytes;
  prometheus::Family<prometheus::Counter>& host_device_copy_bytes_total;
  prometheus::Gauge& device_memory_held_bytes;
  prometheus::Gauge& device_memory_free_bytes;
  prometheus::Counter& host_to_device_bytes_total;
  prometheus::Counter& device_to_host_bytes_total;

 private:
  std::mutex traffic_mu_;
  kernels::BackendMemory last_;  // Traffic already counted, under traffic_mu_
};

}  // namespace ringattn::worker

#endif  // RINGATTN_SERVER_WORKER_WORKER_METRICS_H_
