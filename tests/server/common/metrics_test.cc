// What the daemons' metrics feed the alert rules and the dashboard: the
// plane an RPC is counted in, ringattn_build_info's labels, the process
// metrics' /proc parsing, and the per-step work a worker records.

#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/common/metrics_server.h"
#include "server/common/request_metrics.h"
#include "server/common/service_metrics.h"
#include "server/worker/worker_metrics.h"

namespace ringattn::server {
namespace {

using Labels = std::map<std::string, std::string>;

// Every sample of family `name` in the registry: labels -> value.
std::map<Labels, double> Samples(const prometheus::Registry& registry, const std::string& name) {
  std::map<Labels, double> out;
  for (const prometheus::MetricFamily& f : registry.Collect()) {
    if (f.name != name) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      Labels labels;
      for (const auto& l : m.label) labels[l.name] = l.value;
      double v = m.counter.value + m.gauge.value;
      if (f.type == prometheus::MetricType::Histogram) {
        v = static_cast<double>(m.histogram.sample_count);
      }
      out[labels] = v;
    }
  }
  return out;
}

TEST(MetricsTest, ControlRpcsAreTheirOwnPlane) {
  EXPECT_EQ(PlaneOf("/ringattn.worker.v1.CoordinatorControl/Register"), Plane::kControl);
  EXPECT_EQ(PlaneOf("/ringattn.worker.v1.CoordinatorControl/StoreGet"), Plane::kControl);
  EXPECT_EQ(PlaneOf("/ringattn.worker.v1.CoordinatorControl/StoreSet"), Plane::kControl);
  EXPECT_EQ(PlaneOf("/ringattn.worker.v1.WorkerService/JoinRing"), Plane::kControl);
  EXPECT_EQ(PlaneOf("/ringattn.worker.v1.WorkerService/Forward"), Plane::kApi);
  EXPECT_EQ(PlaneOf("/ringattn.worker.v1.WorkerService/Release"), Plane::kApi);
  EXPECT_EQ(PlaneOf("/ringattn.attention.v1.AttentionService/Forward"), Plane::kApi);
  EXPECT_EQ(PlaneOf("/ringattn.attention.v1.AttentionService/ClusterStatus"), Plane::kApi);
}

TEST(MetricsTest, ApiAndControlCallsAreCountedApart) {
  prometheus::Registry registry;
  ServiceMetrics m(registry, Role::kCoordinator);
  for (int i = 0; i < 50; ++i) m.CountRequest(Plane::kControl, "Register", "OK");
  m.CountRequest(Plane::kApi, "Forward", "OK");
  m.CountRequest(Plane::kApi, "Forward", "INTERNAL");
  EXPECT_EQ(Samples(registry, "ringattn_requests_total"),
            (std::map<Labels, double>{{{{"method", "Forward"}, {"code", "OK"}}, 1},
                                      {{{"method", "Forward"}, {"code", "INTERNAL"}}, 1}}));
  EXPECT_EQ(Samples(registry, "ringattn_control_requests_total"),
            (std::map<Labels, double>{{{{"method", "Register"}, {"code", "OK"}}, 50}}));
}

TEST(MetricsTest, BuildInfoNamesTheRoleAndOnlyAWorkersBackend) {
  prometheus::Registry coordinator;
  ServiceMetrics c(coordinator, Role::kCoordinator);
  const auto c_info = Samples(coordinator, "ringattn_build_info");
  ASSERT_EQ(c_info.size(), 1u);
  EXPECT_EQ(c_info.begin()->first.at("role"), "coordinator");
  EXPECT_EQ(c_info.begin()->first.count("backend"), 0u);

  prometheus::Registry worker;
  ServiceMetrics w(worker, Role::kWorker, "cuda");
  const auto w_info = Samples(worker, "ringattn_build_info");
  ASSERT_EQ(w_info.size(), 1u);
  EXPECT_EQ(w_info.begin()->first.at("role"), "worker");
  EXPECT_EQ(w_info.begin()->first.at("backend"), "cuda");
}

TEST(MetricsTest, ProcStatFieldsCountFromTheLastParenthesis) {
  // A command name with spaces and a ')' of its own.
  const std::string stat =
      "4242 (ringattn ) w) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 "
      "123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
  const std::optional<ProcStat> s = ParseProcStat(stat);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->utime_ticks, 250);
  EXPECT_EQ(s->stime_ticks, 50);
  EXPECT_EQ(s->start_ticks, 123456);
  EXPECT_EQ(s->vsize_bytes, 987654321);
  EXPECT_EQ(s->rss_pages, 2048);
  EXPECT_FALSE(ParseProcStat("4242 (ringattn) S 1 2 3").has_value());
  EXPECT_FALSE(ParseProcStat("").has_value());
}

TEST(MetricsTest, ProcessMetricsDescribeThisProcess) {
  std::map<std::string, double> got;
  for (const prometheus::MetricFamily& f : ProcessMetrics().Collect()) {
    ASSERT_EQ(f.metric.size(), 1u) << f.name;
    got[f.name] = f.metric[0].counter.value + f.metric[0].gauge.value;
  }
  EXPECT_GT(got.at("process_resident_memory_bytes"), 1 << 20);
  EXPECT_GE(got.at("process_virtual_memory_bytes"), got.at("process_resident_memory_bytes"));
  EXPECT_GE(got.at("process_open_fds"), 3);  // stdin, stdout, stderr.
  EXPECT_GE(got.at("process_cpu_seconds_total"), 0);
  EXPECT_GT(got.at("process_start_time_seconds"), 1.5e9);
}

TEST(MetricsTest, WorkersRecordComputeAndWorkOfComputedStepsOnly) {
  prometheus::Registry registry;
  worker::WorkerMetrics m(registry, "cpu");
  // Rank 0 of a causal cp=4 ring: its own chunk computed, three skipped.
  ring::RingStats stats;
  stats.steps.push_back({0, 0, true, 0.5, 0.1});
  stats.steps.back().pairs = 10;
  for (int i = 1; i < 4; ++i) stats.steps.push_back({i, 4 - i, false, 0.0, 0.2});
  m.RecordRingCall(Op::kForward, stats);
  EXPECT_EQ(Samples(registry, "ringattn_ring_step_compute_seconds").at({{"op", "forward"}}), 1);
  EXPECT_EQ(Samples(registry, "ringattn_ring_step_comm_wait_seconds").at({{"op", "forward"}}), 4);
  EXPECT_EQ(Samples(registry, "ringattn_ring_pairs_computed_total").at({{"op", "forward"}}), 10);
}

}  // namespace
}  // namespace ringattn::server
