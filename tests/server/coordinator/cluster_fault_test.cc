// Faults with real processes: a worker killed (SIGKILL) in the middle of a
// forward or a backward, a coordinator killed and restarted, a client whose
// deadline passes while the ring runs. Each must end in a clear status
// within a bound, and the cluster must serve correct results afterwards.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "kernels/reference/synthetic_batch.h"
#include "proto/wire/tensor_stream.h"
#include "server/coordinator/cluster.h"
#include "tests/kernels/testing/attention_case.h"
#include "tests/server/testing/metrics_scrape.h"
#include "tests/server/testing/service_checks.h"

namespace ringattn::coordinator {
namespace {

using kernels::reference::SyntheticBatch;
using server::testing::Scrape;

// A ring bound far above the fail-fast bounds asserted below, so that a
// test passing cannot be a ring wait running into its timeout.
constexpr double kRingTimeoutSeconds = 40;
// A lost rank fails the call within a second: the coordinator cancels the
// call on every rank the moment one fails or is marked down (a hung one: by
// its missed health check, 0.2 s apart and 0.5 s each). Sanitized builds
// run everything several times slower, the bound with them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr absl::Duration kFailFast = absl::Seconds(3);
#else
constexpr absl::Duration kFailFast = absl::Seconds(1);
#endif

std::unique_ptr<client::LocalCluster> StartCluster(int cp) {
  client::LocalClusterOptions options;
  options.cp = cp;
  options.bin_dir = RINGATTN_BIN_DIR;
  options.ring_timeout_seconds = kRingTimeoutSeconds;
  auto cluster = client::LocalCluster::Start(options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

kernels::LayerConfig Full() {
  kernels::LayerConfig layer;
  layer.scale = 0.125f;
  return layer;
}

// Long enough (about a second of ring compute per rank on one core) that a
// fault injected once the workers hold their shards lands mid-ring.
// Long enough that a fault injected up to half a second after its shard
// starts to arrive (a second and more in a backward) lands inside the call.
SyntheticBatch LongBatch() {
  return kernels::reference::MakeSyntheticBatch(
      {1, 16, 8, 8192, 128}, {kernels::testing::SingleDocument(8192)}, kernels::DType::kF32, 7);
}

// Small: checked against the fp64 oracle after recovery.
SyntheticBatch SmallBatch() {
  return kernels::reference::MakeSyntheticBatch(
      {1, 4, 2, 96, 32}, {kernels::reference::GemmaLikeLayout(96)}, kernels::DType::kF32, 11);
}

// Forward, backward and release of `b`, checked against the oracle.
void ExpectCorrectRoundTrip(client::AttentionClient& c, const SyntheticBatch& b) {
  const server::testing::OracleResult want =
      server::testing::ComputeOracle(b, Full(), /*backward=*/true);
  auto e = client::EncodeBatch(b, Full());
  absl::StatusOr<client::ForwardOutputs> f = c.Forward(e->in);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(server::testing::ForwardMismatch(b, want, f->out, f->lse), "");
  absl::StatusOr<client::BackwardOutputs> g =
      c.Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout)));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(server::testing::BackwardMismatch(b, want, f->out, g->dq, g->dk, g->dv), "");
  EXPECT_TRUE(c.Release(f->session.handle()).ok());
}

// Polls (bounded) until `rank`'s worker is receiving its shard of a call:
// its shard byte counter passes `above`.
bool WaitForShardBytes(const std::string& metrics, double above) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    const auto got = Scrape(metrics, "ringattn_received_bytes_total", {{"channel", "shard"}});
    if (got && *got > above) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// Polls ClusterStatus (bounded) until `pred` holds.
template <typename Pred>
bool WaitForStatus(client::AttentionClient& c, Pred pred) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    auto s = c.Status();
    if (s.ok() && pred(*s)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

struct Timed {
  absl::Status status;
  absl::Duration after_fault;
};

// Injects `fault` into `victim` `delay` after its shard starts to arrive,
// while a call made by `call` runs; the call's status and how long after the
// fault it came back.
template <typename Call, typename Fault>
Timed FaultMidCall(client::LocalCluster& cluster, int victim, absl::Duration delay, Call call,
                   Fault fault) {
  const std::string metrics = cluster.worker_metrics_addresses()[victim];
  const double before =
      Scrape(metrics, "ringattn_received_bytes_total", {{"channel", "shard"}}).value_or(-1);
  std::future<absl::Status> running = std::async(std::launch::async, call);
  EXPECT_TRUE(WaitForShardBytes(metrics, before));
  // The shard is arriving: the ring starts within milliseconds, and runs
  // for about a second or more.
  std::this_thread::sleep_for(absl::ToChronoMilliseconds(delay));
  EXPECT_EQ(running.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the call ended before the fault";
  const absl::Time injected = absl::Now();
  fault();
  Timed t;
  t.status = running.get();
  t.after_fault = absl::Now() - injected;
  return t;
}

// Kills (SIGKILL) `victim` while a call made by `call` runs on the ring.
template <typename Call>
Timed KillMidCall(client::LocalCluster& cluster, int victim, Call call,
                  absl::Duration delay = absl::Milliseconds(300)) {
  return FaultMidCall(cluster, victim, delay, call,
                      [&] { EXPECT_TRUE(cluster.KillWorker(victim).ok()); });
}

// The ring is rebuilt with a new generation once the killed worker's
// replacement registers, and serves correct results again.
void RestartAndExpectRebuilt(client::LocalCluster& cluster, client::AttentionClient& c, int victim,
                             uint64_t old_generation) {
  ASSERT_TRUE(cluster.StartWorker(victim).ok());
  ASSERT_TRUE(cluster.WaitReady().ok());
  auto s = c.Status();
  ASSERT_TRUE(s.ok());
  EXPECT_GT(s->ring_generation(), old_generation);
  const auto rebuilds =
      Scrape(cluster.coordinator_metrics_address(), "ringattn_ring_rebuilds_total");
  ASSERT_TRUE(rebuilds.has_value());
  EXPECT_GE(*rebuilds, 1.0);
  ExpectCorrectRoundTrip(c, SmallBatch());
}

TEST(ClusterFaultTest, WorkerKilledMidForwardFailsFastNamingItsRankAndTheRingIsRebuilt) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const uint64_t generation = c->Status()->ring_generation();
  const SyntheticBatch big = LongBatch();
  auto e = client::EncodeBatch(big, Full());
  const Timed t = KillMidCall(*cluster, 1, [&] { return c->Forward(e->in).status(); });
  EXPECT_EQ(t.status.code(), absl::StatusCode::kUnavailable) << t.status;
  EXPECT_NE(t.status.message().find("rank 1"), std::string::npos) << t.status;
  EXPECT_LT(t.after_fault, kFailFast);
  std::printf("figure: forward failed %.2f s after its worker was killed: %s\n",
              absl::ToDoubleSeconds(t.after_fault), std::string(t.status.message()).c_str());

  // While the worker is gone, calls fail at once and say why.
  ASSERT_TRUE(WaitForStatus(*c, [](const auto& s) { return !s.ring_ready(); }));
  const absl::Time t0 = absl::Now();
  const SyntheticBatch small_batch = SmallBatch();  // The encoding points into it.
  auto small = client::EncodeBatch(small_batch, Full());
  const absl::Status refused = c->Forward(small->in).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_NE(refused.message().find("rank 1"), std::string::npos) << refused;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  const auto up = Scrape(cluster->coordinator_metrics_address(), "ringattn_workers_up");
  ASSERT_TRUE(up.has_value());
  EXPECT_EQ(*up, 1.0);

  RestartAndExpectRebuilt(*cluster, *c, 1, generation);
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

// The coordinator forwards inputs while the client still sends them: a
// worker lost in that phase fails the call as a lost worker (UNAVAILABLE
// naming it), not as a withdrawal, and no rank runs it.
TEST(ClusterFaultTest, WorkerKilledWhileInputsStreamInFailsNamingItsRank) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto channel = grpc::CreateChannel(cluster->address(), grpc::InsecureChannelCredentials());
  auto stub = attention::v1::AttentionService::NewStub(channel);
  const SyntheticBatch big = LongBatch();
  auto e = client::EncodeBatch(big, Full());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub->Forward(&ctx);
  attention::v1::ForwardRequest req;
  attention::v1::ForwardHeader* h = req.mutable_header();
  *h->mutable_layer() = e->in.layer;
  h->set_dtype(e->in.dtype);
  h->set_batch(e->in.batch);
  h->set_heads(e->in.heads);
  h->set_kv_heads(e->in.kv_heads);
  h->set_seq_len(e->in.seq_len);
  h->set_head_dim(e->in.head_dim);
  ASSERT_TRUE(stream->Write(req));
  std::vector<attention::v1::TensorChunk> pieces;
  const std::vector<int64_t> q_shape = {e->in.batch, e->in.heads, e->in.seq_len, e->in.head_dim};
  wire::SplitTensor("q", e->in.dtype, q_shape, e->in.q, [&](attention::v1::TensorChunk& c) {
    pieces.push_back(c);
    return true;
  });
  ASSERT_GE(pieces.size(), size_t{4});
  // Half of q: both ranks hold some of it (q is [B, H, S, D], every head
  // row crosses both shards).
  const std::string metrics = cluster->worker_metrics_addresses()[1];
  const double before =
      Scrape(metrics, "ringattn_received_bytes_total", {{"channel", "shard"}}).value_or(-1);
  for (size_t i = 0; i < pieces.size() / 2; ++i) {
    attention::v1::ForwardRequest r;
    *r.mutable_chunk() = pieces[i];
    ASSERT_TRUE(stream->Write(r));
  }
  ASSERT_TRUE(WaitForShardBytes(metrics, before));
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(cluster->KillWorker(1).ok());
  // The rest may or may not be taken: the coordinator answers once it sees
  // the rank gone.
  for (size_t i = pieces.size() / 2; i < pieces.size(); ++i) {
    attention::v1::ForwardRequest r;
    *r.mutable_chunk() = pieces[i];
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  attention::v1::ForwardResponse resp;
  while (stream->Read(&resp)) {
    ADD_FAILURE() << "a call that lost a rank before its commit answered";
  }
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_NE(s.error_message().find("rank 1"), std::string::npos) << s.error_message();
  EXPECT_LT(absl::Now() - killed, kFailFast);

  auto c = client::AttentionClient::Connect(cluster->address());
  ASSERT_TRUE(WaitForStatus(*c, [](const auto& st) { return !st.ring_ready(); }));
  RestartAndExpectRebuilt(*cluster, *c, 1, 0);
}

TEST(ClusterFaultTest, WorkerKilledMidBackwardFailsFastAndOldSessionsAskForANewForward) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const uint64_t generation = c->Status()->ring_generation();
  const SyntheticBatch big = LongBatch();
  auto e = client::EncodeBatch(big, Full());
  absl::StatusOr<client::ForwardOutputs> f = c->Forward(e->in);
  ASSERT_TRUE(f.ok()) << f.status();
  const Timed t = KillMidCall(*cluster, 0, [&] {
    return c->Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout))).status();
  });
  EXPECT_EQ(t.status.code(), absl::StatusCode::kUnavailable) << t.status;
  EXPECT_NE(t.status.message().find("rank 0"), std::string::npos) << t.status;
  EXPECT_LT(t.after_fault, kFailFast);
  std::printf("figure: backward failed %.2f s after its worker was killed: %s\n",
              absl::ToDoubleSeconds(t.after_fault), std::string(t.status.message()).c_str());

  RestartAndExpectRebuilt(*cluster, *c, 0, generation);
  // The session's saved state died with the old ring: a clear status.
  const absl::Status stale =
      c->Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout))).status();
  EXPECT_EQ(stale.code(), absl::StatusCode::kUnavailable) << stale;
  EXPECT_NE(stale.message().find("run forward again"), std::string::npos) << stale;
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST(ClusterFaultTest, RestartedCoordinatorGetsItsWorkersBackByTheirHeartbeat) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  const std::vector<pid_t> workers = cluster->worker_pids();
  ASSERT_TRUE(cluster->RestartCoordinator().ok());
  for (pid_t pid : workers)
    EXPECT_TRUE(server::testing::ChildRunning(pid)) << "workers were not restarted";
  auto c = client::AttentionClient::Connect(cluster->address());
  auto s = c->Status();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->ring_ready());
  EXPECT_EQ(s->workers_size(), 2);
  ExpectCorrectRoundTrip(*c, SmallBatch());
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

// Polls (bounded) until no worker and not the coordinator holds session
// state, as their own metrics say.
bool WaitForNoSessionState(client::LocalCluster& cluster) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    bool freed = Scrape(cluster.coordinator_metrics_address(), "ringattn_memory_held_bytes") == 0.0;
    for (const std::string& w : cluster.worker_metrics_addresses()) {
      freed &= Scrape(w, "ringattn_sessions_open") == 0.0 &&
               Scrape(w, "ringattn_memory_held_bytes") == 0.0;
    }
    if (freed) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// A client that gives up while the ring runs (it cancels, or its deadline
// passes) must leave no session state on the workers and must not break the
// ring: every rank finishes the committed ring call (one rank cannot leave a
// ring alone), then the coordinator releases the session nobody will use.
TEST(ClusterFaultTest, ClientCancelOrDeadlineMidRingFreesWorkerMemoryAndKeepsTheRing) {
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const uint64_t generation = c->Status()->ring_generation();
  const SyntheticBatch big = LongBatch();
  auto e = client::EncodeBatch(big, Full());
  const std::string worker0 = cluster->worker_metrics_addresses()[0];

  auto shard_bytes = [&] {
    return Scrape(worker0, "ringattn_received_bytes_total", {{"channel", "shard"}}).value_or(-1);
  };
  // A whole call first, timed: when its shards reach the workers, and when
  // it ends.
  double before = shard_bytes();
  absl::Time start = absl::Now();
  std::future<absl::StatusOr<client::ForwardOutputs>> whole =
      std::async(std::launch::async, [&] { return c->Forward(e->in); });
  ASSERT_TRUE(WaitForShardBytes(worker0, before));
  const absl::Duration to_dispatch = absl::Now() - start;
  absl::StatusOr<client::ForwardOutputs> done = whole.get();
  ASSERT_TRUE(done.ok()) << done.status();
  const absl::Duration to_end = absl::Now() - start;
  ASSERT_TRUE(c->Release(done->session.handle()).ok());
  std::printf("figure: long forward: shards reach the workers after %.2f s, ends after %.2f s\n",
              absl::ToDoubleSeconds(to_dispatch), absl::ToDoubleSeconds(to_end));

  // Cancel: once the worker is receiving its shard.
  before = shard_bytes();
  std::future<absl::Status> running =
      std::async(std::launch::async, [&] { return c->Forward(e->in).status(); });
  ASSERT_TRUE(WaitForShardBytes(worker0, before));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  c->CancelAll();
  const absl::Status cancelled = running.get();
  EXPECT_EQ(cancelled.code(), absl::StatusCode::kCancelled) << cancelled;
  EXPECT_TRUE(WaitForNoSessionState(*cluster)) << "state still held after a cancel";

  // Deadline: half way between the dispatch and the end measured above. On
  // a loaded machine this call can run faster than the timed one and end
  // first; then it is released and tried again with a deadline nearer the
  // dispatch (a bounded number of times).
  absl::Status late = absl::UnknownError("not run");
  absl::Duration deadline = (to_dispatch + to_end) / 2;
  for (int attempt = 0; attempt < 4; ++attempt) {
    before = shard_bytes();
    absl::StatusOr<client::ForwardOutputs> early = c->Forward(e->in, deadline);
    late = early.status();
    if (!early.ok()) break;
    ASSERT_TRUE(c->Release(early->session.handle()).ok());
    deadline = (to_dispatch + deadline) / 2;
  }
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;
  EXPECT_GT(shard_bytes(), before) << "the deadline passed before the call reached the workers";
  EXPECT_TRUE(WaitForNoSessionState(*cluster)) << "state still held after a deadline";

  auto s = c->Status();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ring_generation(), generation) << "a client leaving must not rebuild the ring";
  ExpectCorrectRoundTrip(*c, SmallBatch());
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

enum class Fault { kKill, kStop };

// Kills (SIGKILL) or stops (SIGSTOP) a seeded rank at seeded points of
// forwards and backwards (inputs still streaming in, the ring starting,
// mid-ring): every call fails within kFailFast with UNAVAILABLE naming the
// rank, and the ring is rebuilt each time (a stopped rank once it is woken).
void ExpectSeededFaultsFailFast(int cp, Fault fault, uint32_t seed, int repetitions) {
  auto cluster = StartCluster(cp);
  ASSERT_NE(cluster, nullptr);
  auto c = client::AttentionClient::Connect(cluster->address());
  const SyntheticBatch big = LongBatch();
  auto e = client::EncodeBatch(big, Full());
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> rank(0, cp - 1);
  // From the first shard bytes (inputs still streaming in) to mid-ring:
  // uninterrupted, LongBatch's forward takes about 1.2 s here and its
  // backward 3.5 s at cp 2 (less at cp 4), so every fault lands inside the
  // call with room to spare.
  std::uniform_int_distribution<int> forward_delay_ms(0, 500);
  std::uniform_int_distribution<int> backward_delay_ms(0, 1200);
  const char* what = fault == Fault::kKill ? "killed" : "stopped";
  for (int i = 0; i < repetitions; ++i) {
    const bool backward = i % 2 == 1;
    const int victim = rank(rng);
    const absl::Duration delay =
        absl::Milliseconds(backward ? backward_delay_ms(rng) : forward_delay_ms(rng));
    std::optional<client::ForwardOutputs> f;
    if (backward) {
      absl::StatusOr<client::ForwardOutputs> done = c->Forward(e->in);
      ASSERT_TRUE(done.ok()) << done.status();
      f = *std::move(done);
    }
    const uint64_t generation = c->Status()->ring_generation();
    const pid_t pid = cluster->worker_pids()[victim];
    const Timed t = FaultMidCall(
        *cluster, victim, delay,
        [&] {
          if (!backward) return c->Forward(e->in).status();
          return c->Backward(e->in, f->session.handle(), std::as_bytes(std::span(e->dout)))
              .status();
        },
        [&] {
          if (fault == Fault::kKill) {
            EXPECT_TRUE(cluster->KillWorker(victim).ok());
          } else {
            EXPECT_EQ(kill(pid, SIGSTOP), 0);
          }
        });
    // A stopped worker is woken whatever the outcome, so that it can rejoin.
    if (fault == Fault::kStop) {
      EXPECT_EQ(kill(pid, SIGCONT), 0);
    }
    const std::string rank_name = absl::StrCat("rank ", victim);
    EXPECT_EQ(t.status.code(), absl::StatusCode::kUnavailable) << t.status;
    EXPECT_NE(t.status.message().find(rank_name), std::string::npos) << t.status;
    EXPECT_LT(t.after_fault, kFailFast) << t.status;
    std::printf("figure: cp %d %s, rank %d %s %.2f s into its shard: failed %.2f s later: %s\n", cp,
                backward ? "backward" : "forward", victim, what, absl::ToDoubleSeconds(delay),
                absl::ToDoubleSeconds(t.after_fault), std::string(t.status.message()).c_str());
    if (fault == Fault::kKill) {
      ASSERT_TRUE(cluster->StartWorker(victim).ok());
      ASSERT_TRUE(cluster->WaitReady().ok());
    }
    ASSERT_TRUE(WaitForStatus(
        *c, [&](const auto& st) { return st.ring_ready() && st.ring_generation() > generation; }));
  }
  ExpectCorrectRoundTrip(*c, SmallBatch());
  c.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST(ClusterFaultTest, KillsAtSeededPointsFailFastAtCp2) {
  ExpectSeededFaultsFailFast(2, Fault::kKill, 20, 6);
}

TEST(ClusterFaultTest, KillsAtSeededPointsFailFastAtCp4) {
  ExpectSeededFaultsFailFast(4, Fault::kKill, 21, 6);
}

// A hung worker (SIGSTOP) holds its peers in the ring and answers nothing:
// once the health checker marks it down, the call in flight fails at once
// naming it, and the ring is rebuilt when it wakes.
TEST(ClusterFaultTest, StopsAtSeededPointsFailFastAtCp2) {
  ExpectSeededFaultsFailFast(2, Fault::kStop, 22, 4);
}

TEST(ClusterFaultTest, StopsAtSeededPointsFailFastAtCp4) {
  ExpectSeededFaultsFailFast(4, Fault::kStop, 23, 4);
}

}  // namespace
}  // namespace ringattn::coordinator
