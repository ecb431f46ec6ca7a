#include "server/worker/worker_metrics.h"

namespace ringattn::worker {

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, const std::string& backend)
    : service(registry, server::Role::kWorker, backend),
      shard_call_duration_seconds(prometheus::BuildHistogram()
                                      .Name("ringattn_shard_call_duration_seconds")
                                      .Help("This rank's whole ring calls.")
                                      .Register(registry),
                                  server::DoublingBuckets(0.001, 18)),
      ring_step_compute_seconds(
          prometheus::BuildHistogram()
              .Name("ringattn_ring_step_compute_seconds")
              .Help("Compute time of one computed ring step on this rank (skipped steps left out).")
              .Register(registry),
          server::DoublingBuckets(0.0001, 20)),
      ring_step_comm_wait_seconds(
          prometheus::BuildHistogram()
              .Name("ringattn_ring_step_comm_wait_seconds")
              .Help("Time one ring step waited on the ring after its compute (exposed comm).")
              .Register(registry),
          server::DoublingBuckets(0.0001, 20)),
      ring_pairs_computed_total(
          prometheus::BuildCounter()
              .Name("ringattn_ring_pairs_computed_total")
              .Help("(query, key) pairs the position rules allow in this rank's computed ring "
                    "steps, over batch rows and query heads.")
              .Register(registry)),
      ring_rank(prometheus::BuildGauge()
                    .Name("ringattn_ring_rank")
                    .Help("This worker's rank in the current ring; -1 outside a ring.")
                    .Register(registry)
                    .Add({})),
      device_memory_bytes(
          prometheus::BuildGauge()
              .Name("ringattn_device_memory_bytes")
              .Help("Device memory on this worker's GPU: held by its backend, and free on the "
                    "device at the last admission check (0 on the CPU backend).")
              .Register(registry)),
      host_device_copy_bytes_total(
          prometheus::BuildCounter()
              .Name("ringattn_host_device_copy_bytes_total")
              .Help("Bytes the backend copied between host and device memory.")
              .Register(registry)),
      device_memory_held_bytes(device_memory_bytes.Add({{"state", "held"}})),
      device_memory_free_bytes(device_memory_bytes.Add({{"state", "free"}})),
      host_to_device_bytes_total(host_device_copy_bytes_total.Add({{"direction", "to_device"}})),
      device_to_host_bytes_total(host_device_copy_bytes_total.Add({{"direction", "to_host"}})) {
  ring_rank.Set(-1);
}

void WorkerMetrics::RecordBackendMemory(const kernels::BackendMemory& memory) {
  std::lock_guard<std::mutex> lock(traffic_mu_);
  device_memory_held_bytes.Set(static_cast<double>(memory.device_bytes_held));
  device_memory_free_bytes.Set(static_cast<double>(memory.device_bytes_free));
  // The backend's counts only grow; a call reading an older snapshot than
  // one already counted adds nothing.
  if (memory.host_to_device_bytes > last_.host_to_device_bytes) {
    host_to_device_bytes_total.Increment(
        static_cast<double>(memory.host_to_device_bytes - last_.host_to_device_bytes));
    last_.host_to_device_bytes = memory.host_to_device_bytes;
  }
  if (memory.device_to_host_bytes > last_.device_to_host_bytes) {
    device_to_host_bytes_total.Increment(
        static_cast<double>(memory.device_to_host_bytes - last_.device_to_host_bytes));
    last_.device_to_host_bytes = memory.device_to_host_bytes;
  }
}

void WorkerMetrics::RecordRingCall(server::Op op, const ring::RingStats& stats) {
  shard_call_duration_seconds[op].Observe(stats.total_seconds);
  for (const ring::StepStats& step : stats.steps) {
    // Contiguous causal shards give ranks different numbers of computed
    // steps by design; counting the skipped ones as zero-time steps would
    // make the busiest rank look slow.
    if (step.computed) {
      ring_step_compute_seconds[op].Observe(step.compute_seconds);
      ring_pairs_computed_total[op].Increment(static_cast<double>(step.pairs));
    }
    ring_step_comm_wait_seconds[op].Observe(step.wait_seconds);
  }
  service.sent_bytes(server::Channel::kRing).Increment(static_cast<double>(stats.bytes_sent));
  service.received_bytes(server::Channel::kRing)
      .Increment(static_cast<double>(stats.bytes_received));
}

}  // namespace ringattn::worker
