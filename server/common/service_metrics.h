#ifndef RINGATTN_SERVER_COMMON_SERVICE_METRICS_H_
#define RINGATTN_SERVER_COMMON_SERVICE_METRICS_H_

#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ringattn::server {

enum class Op { kForward, kBackward };

// One metric per ring operation, labelled op="forward" / op="backward".
template <typename T>
class PerOp {
 public:
  template <typename... Args>
  PerOp(prometheus::Family<T>& family, const Args&... args)
      : forward_(family.Add({{"op", "forward"}}, args...)),
        backward_(family.Add({{"op", "backward"}}, args...)) {}
  T& operator[](Op op) const { return op == Op::kForward ? forward_ : backward_; }

 private:
  T& forward_;
  T& backward_;
};

// Where tensor bytes travel: client <-> coordinator, coordinator <->
// workers, worker <-> worker (K/V chunks and gradient accumulators).
enum class Channel { kApi, kShard, kRing };

// Which daemon exports the metrics: ringattn_build_info's role label.
enum class Role { kCoordinator, kWorker };

// What an RPC serves. kApi: the calls that do attention work (the public
// API on the coordinator, shard calls on the workers). kControl: what keeps
// the cluster together (registration heartbeats, the rendezvous store,
// joining a ring), counted apart so its volume never hides API failures.
enum class Plane { kApi, kControl };

// The metrics both daemons export (names in docs/operations.md's metrics
// table). Metric objects live in the registry; this only holds references.
class ServiceMetrics {
 public:
  // `backend`: the compute backend ("cpu", "cuda") for ringattn_build_info;
  // empty for a daemon that computes nothing (the coordinator).
  ServiceMetrics(prometheus::Registry& registry, Role role, const std::string& backend = "");

  // Counts one finished RPC: method is the RPC's name, code its status.
  void CountRequest(Plane plane, const std::string& method, const std::string& code);

  prometheus::Counter& received_bytes(Channel c) const;
  prometheus::Counter& sent_bytes(Channel c) const;

  prometheus::Gauge& sessions_open;
  prometheus::Gauge& memory_held_bytes;
  prometheus::Gauge& ring_generation;

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& control_requests_;
  prometheus::Family<prometheus::Counter>& received_;
  prometheus::Family<prometheus::Counter>& sent_;
};

// Bucket bounds from `first` doubling `count` times: latencies span
// microseconds (one small ring step) to minutes (a long sequence).
prometheus::Histogram::BucketBoundaries DoublingBuckets(double first, int count);

}  // namespace ringattn::server

#endif  // RINGATTN_SERVER_COMMON_SERVICE_METRICS_H_
