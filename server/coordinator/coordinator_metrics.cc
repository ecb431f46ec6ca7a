#include "server/coordinator/coordinator_metrics.h"

namespace ringattn::coordinator {

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& registry)
    : service(registry, server::Role::kCoordinator),
      call_duration_seconds(prometheus::BuildHistogram()
                                .Name("ringattn_call_duration_seconds")
                                .Help("Whole client calls, first byte in to last byte out.")
                                .Register(registry),
                            server::DoublingBuckets(0.001, 18)),
      calls_in_flight(prometheus::BuildGauge()
                          .Name("ringattn_calls_in_flight")
                          .Help("Client calls being served now.")
                          .Register(registry)),
      flops_total(prometheus::BuildCounter()
                      .Name("ringattn_flops_total")
                      .Help("Attention FLOPs of completed calls (pairs the position rules allow).")
                      .Register(registry)),
      achieved_flops_per_second(prometheus::BuildGauge()
                                    .Name("ringattn_achieved_flops_per_second")
                                    .Help("FLOP/s of the last completed call, end to end.")
                                    .Register(registry)),
      memory_budget_bytes(prometheus::BuildGauge()
                              .Name("ringattn_memory_budget_bytes")
                              .Help("Session state the workers may hold in total.")
                              .Register(registry)
                              .Add({})),
      ring_rebuilds_total(prometheus::BuildCounter()
                              .Name("ringattn_ring_rebuilds_total")
                              .Help("Rings built after the first (a worker failed or returned).")
                              .Register(registry)
                              .Add({})),
      ring_size(prometheus::BuildGauge()
                    .Name("ringattn_ring_size")
                    .Help("Workers the ring needs (context-parallel ranks).")
                    .Register(registry)
                    .Add({})),
      workers_registered(prometheus::BuildGauge()
                             .Name("ringattn_workers_registered")
                             .Help("Workers that registered with this coordinator.")
                             .Register(registry)
                             .Add({})),
      workers_up(prometheus::BuildGauge()
                     .Name("ringattn_workers_up")
                     .Help("Registered workers answering their health check.")
                     .Register(registry)
                     .Add({})),
      layout_calls_total(prometheus::BuildCounter()
                             .Name("ringattn_layout_calls_total")
                             .Help("Completed forward calls by the shard layout they ran with.")
                             .Register(registry)),
      layout_contiguous_calls(layout_calls_total.Add({{"layout", "contiguous"}})),
      layout_zigzag_calls(layout_calls_total.Add({{"layout", "zigzag"}})) {}

}  // namespace ringattn::coordinator
