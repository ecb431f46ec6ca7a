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
                    .Add({})) {
  ring_rank.Set(-1);
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
