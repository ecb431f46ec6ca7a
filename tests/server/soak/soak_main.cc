// Load soak of the service: concurrent clients run many sessions against a
// local cluster (a coordinator under --memory_budget_bytes and cp worker
// processes) for a set time. Each client loops over: forward, backward,
// release; sessions abandoned to the session TTL (and later asked for,
// which must be NOT_FOUND); sessions over the whole memory budget (which
// must be RESOURCE_EXHAUSTED). Every accepted call's results are checked
// against the fp64 oracle, computed once per distinct input. The RSS of
// every daemon is sampled and must stay flat after warm-up; the process
// exits non-zero on any unexpected outcome.
//
//   build/release/bin/ringattn_soak --duration=300s      # the full soak
//   build/release/bin/ringattn_soak --duration=40s       # what CI runs
//
// It ends with `figure: <name> <value>` lines.

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "kernels/reference/synthetic_batch.h"
#include "tests/server/testing/service_checks.h"

ABSL_FLAG(absl::Duration, duration, absl::Seconds(300), "How long the clients run.");
ABSL_FLAG(int, clients, 4, "Concurrent client threads, each with its own channel.");
ABSL_FLAG(int, cp, 2, "Worker processes in the ring.");
ABSL_FLAG(int, worker_threads, 1, "Kernel threads per worker.");
ABSL_FLAG(int64_t, memory_budget_bytes, 8'000'000,
          "The coordinator's --memory_budget_bytes: session state held at once.");
ABSL_FLAG(double, session_ttl_seconds, 3, "The coordinator's --session_ttl_seconds.");
ABSL_FLAG(double, warmup_fraction, 0.25, "Part of the run before RSS must be flat.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the inputs and of every client's choices.");
ABSL_FLAG(int64_t, max_calls, 2'000'000, "Stop after this many calls, whatever the time.");
ABSL_FLAG(std::string, bin_dir, "",
          "Directory of ringattn-coordinator and ringattn-worker (default: this program's).");

namespace ringattn::soak {
namespace {

using kernels::reference::SyntheticBatch;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// One distinct input with its expected results, computed once.
struct Problem {
  std::string name;
  SyntheticBatch batch;
  kernels::LayerConfig layer;
  std::unique_ptr<client::EncodedBatch> encoded;
  server::testing::OracleResult oracle;
  kernels::reference::DenseGrads grads;  // At O rounded to the dtype.
  size_t call_bytes = 0;                 // Q, K, V and dO.
};

kernels::LayerConfig Layer(kernels::LayerKind kind, int64_t window, float scale) {
  kernels::LayerConfig l;
  l.kind = kind;
  l.window = window;
  l.scale = scale;
  return l;
}

std::unique_ptr<Problem> MakeProblem(const std::string& name,
                                     const kernels::reference::BatchShape& shape,
                                     kernels::DType dtype, const kernels::LayerConfig& layer,
                                     uint64_t seed, bool with_oracle) {
  auto p = std::make_unique<Problem>();
  p->name = name;
  p->batch = kernels::reference::MakeSyntheticBatch(
      shape, {kernels::reference::GemmaLikeLayout(shape.seq_len)}, dtype, seed);
  p->layer = layer;
  p->encoded = client::EncodeBatch(p->batch, layer);
  p->call_bytes =
      p->encoded->q.size() + p->encoded->k.size() + p->encoded->v.size() + p->encoded->dout.size();
  if (with_oracle) {
    p->oracle = server::testing::ComputeOracle(p->batch, layer, true);
    // The O the service returns is the oracle's rounded to the dtype (up
    // to one ulp in a few elements, well inside the tolerance).
    const std::vector<float> o(p->oracle.forward.out.begin(), p->oracle.forward.out.end());
    const std::vector<uint8_t> rounded = kernels::reference::Encode(o, dtype);
    p->grads = server::testing::GradientsAt(p->batch, p->oracle, std::as_bytes(std::span(rounded)));
  }
  return p;
}

// Counts, shared by the clients.
struct Tally {
  std::mutex mu;
  std::map<std::string, int64_t> count;  // "forward OK", "backward NOT_FOUND", ...
  std::vector<std::string> failures;
  int64_t verified = 0;
  int64_t calls = 0;

  void Add(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu);
    ++count[key];
    ++calls;
  }
  void Fail(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu);
    if (failures.size() < 50) failures.push_back(what);
  }
  void Verified() {
    std::lock_guard<std::mutex> lock(mu);
    ++verified;
  }
  int64_t Calls() {
    std::lock_guard<std::mutex> lock(mu);
    return calls;
  }
  bool TooManyFailures() {
    std::lock_guard<std::mutex> lock(mu);
    return failures.size() >= 50;
  }
};

std::string CodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

// Sessions left without backward or release, for the TTL to collect.
struct Abandoned {
  std::string handle;
  const Problem* problem;
  Clock::time_point at;
};

class Soak {
 public:
  Soak(const std::string& address, std::vector<std::unique_ptr<Problem>>& problems,
       const Problem& over_budget, double ttl_seconds)
      : address_(address), problems_(problems), over_budget_(over_budget), ttl_(ttl_seconds) {}

  void RunClient(int id, uint64_t seed, Clock::time_point end, int64_t max_calls) {
    std::mt19937_64 rng(seed);
    auto c = client::AttentionClient::Connect(address_);
    while (Clock::now() < end && tally_.Calls() < max_calls && !tally_.TooManyFailures()) {
      const double r = std::uniform_real_distribution<double>(0, 1)(rng);
      const Problem& p = *problems_[rng() % problems_.size()];
      if (r < 0.80) {
        Cycle(*c, p, /*backward=*/true, /*release=*/true);
      } else if (r < 0.83) {
        Cycle(*c, p, false, false);  // Abandoned after forward.
      } else if (r < 0.85) {
        Cycle(*c, p, true, false);  // Abandoned after backward.
      } else if (r < 0.88) {
        OverBudget(*c);
      } else if (r < 0.95) {
        AskForExpired(*c, rng() % 2 == 0);
      } else {
        ReclaimFresh(*c);
      }
    }
    (void)id;
  }

  Tally& tally() { return tally_; }
  int64_t abandoned() const { return abandoned_total_.load(); }

 private:
  // Forward (checked), then optionally backward (checked) and release.
  void Cycle(client::AttentionClient& c, const Problem& p, bool backward, bool release) {
    absl::StatusOr<client::ForwardOutputs> f = c.Forward(p.encoded->in, absl::Seconds(120));
    tally_.Add(absl::StrCat("forward ", CodeName(f.status().code())));
    if (!f.ok()) {
      // Over capacity is the one refusal a valid call may get.
      if (absl::IsResourceExhausted(f.status()) &&
          f.status().message().find("memory budget") != absl::string_view::npos) {
        return;
      }
      tally_.Fail(absl::StrCat(p.name, " forward: ", f.status().ToString()));
      return;
    }
    if (const std::string bad = server::testing::ForwardMismatch(p.batch, p.oracle, f->out, f->lse);
        !bad.empty()) {
      tally_.Fail(absl::StrCat(p.name, " forward result: ", bad));
    } else {
      tally_.Verified();
    }
    const std::string& handle = f->session.handle();
    if (backward) {
      absl::StatusOr<client::BackwardOutputs> g = c.Backward(
          p.encoded->in, handle, std::as_bytes(std::span(p.encoded->dout)), absl::Seconds(120));
      tally_.Add(absl::StrCat("backward ", CodeName(g.status().code())));
      if (!g.ok()) {
        tally_.Fail(absl::StrCat(p.name, " backward: ", g.status().ToString()));
      } else if (const std::string bad =
                     server::testing::BackwardMismatch(p.batch, p.grads, g->dq, g->dk, g->dv);
                 !bad.empty()) {
        tally_.Fail(absl::StrCat(p.name, " backward result: ", bad));
      } else {
        tally_.Verified();
      }
    }
    if (release) {
      const absl::Status s = c.Release(handle);
      tally_.Add(absl::StrCat("release ", CodeName(s.code())));
      if (!s.ok()) tally_.Fail(absl::StrCat(p.name, " release: ", s.ToString()));
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    abandoned_.push_back({handle, &p, Clock::now()});
    ++abandoned_total_;
  }

  // A session bigger than the whole budget: refused whatever else is held.
  void OverBudget(client::AttentionClient& c) {
    absl::StatusOr<client::ForwardOutputs> f =
        c.Forward(over_budget_.encoded->in, absl::Seconds(120));
    tally_.Add(absl::StrCat("over-budget forward ", CodeName(f.status().code())));
    if (f.ok()) {
      tally_.Fail("a session over the whole memory budget was accepted");
      (void)c.Release(f->session.handle());
    } else if (!absl::IsResourceExhausted(f.status())) {
      tally_.Fail(absl::StrCat("over-budget forward: ", f.status().ToString()));
    }
  }

  // An abandoned session older than the TTL (with a margin) must be gone:
  // NOT_FOUND for backward and for release.
  void AskForExpired(client::AttentionClient& c, bool backward) {
    Abandoned a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto old = std::find_if(abandoned_.begin(), abandoned_.end(),
                                    [&](const Abandoned& x) { return Seconds(x.at) > ttl_ + 1.5; });
      if (old == abandoned_.end()) return;
      a = *old;
      abandoned_.erase(old);
    }
    absl::Status s;
    if (backward) {
      s = c.Backward(a.problem->encoded->in, a.handle,
                     std::as_bytes(std::span(a.problem->encoded->dout)), absl::Seconds(60))
              .status();
    } else {
      s = c.Release(a.handle);
    }
    tally_.Add(
        absl::StrCat(backward ? "expired backward " : "expired release ", CodeName(s.code())));
    if (!absl::IsNotFound(s)) {
      tally_.Fail(absl::StrCat("session ", a.handle, " abandoned ", Seconds(a.at), " s ago (TTL ",
                               ttl_, " s): ", s.ToString()));
    }
  }

  // A young abandoned session is still there: released early, OK.
  void ReclaimFresh(client::AttentionClient& c) {
    std::string handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto young = std::find_if(abandoned_.rbegin(), abandoned_.rend(),
                                      [&](const Abandoned& x) { return Seconds(x.at) < ttl_ / 2; });
      if (young == abandoned_.rend()) return;
      handle = young->handle;
      abandoned_.erase(std::next(young).base());
    }
    const absl::Status s = c.Release(handle);
    tally_.Add(absl::StrCat("early release ", CodeName(s.code())));
    if (!s.ok()) tally_.Fail(absl::StrCat("early release of ", handle, ": ", s.ToString()));
  }

  const std::string address_;
  std::vector<std::unique_ptr<Problem>>& problems_;
  const Problem& over_budget_;
  const double ttl_;
  Tally tally_;
  std::mutex mu_;
  std::deque<Abandoned> abandoned_;  // Guarded by mu_.
  std::atomic<int64_t> abandoned_total_{0};
};

// RSS samples of one process: (seconds since start, KiB).
struct RssTrace {
  std::string name;
  pid_t pid;
  std::vector<std::pair<double, int64_t>> samples;

  int64_t MaxIn(double from, double to) const {
    int64_t m = -1;
    for (const auto& [t, kib] : samples) {
      if (t >= from && t < to) m = std::max(m, kib);
    }
    return m;
  }
  int64_t CountIn(double from, double to) const {
    int64_t n = 0;
    for (const auto& [t, kib] : samples) n += t >= from && t < to;
    return n;
  }
};

int Run() {
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  const int clients = absl::GetFlag(FLAGS_clients);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const double ttl = absl::GetFlag(FLAGS_session_ttl_seconds);
  const int64_t budget = absl::GetFlag(FLAGS_memory_budget_bytes);

  // Distinct inputs: every dtype, full and sliding layers, GQA, B = 2,
  // lengths that the coordinator pads.
  std::vector<std::unique_ptr<Problem>> problems;
  using kernels::DType;
  using kernels::LayerKind;
  problems.push_back(MakeProblem("fp32_sliding_s256", {1, 4, 2, 256, 64}, DType::kF32,
                                 Layer(LayerKind::kSliding, 64, 0.125f), seed + 1, true));
  problems.push_back(MakeProblem("bf16_full_b2_s200", {2, 4, 1, 200, 32}, DType::kBF16,
                                 Layer(LayerKind::kFull, 512, 0.17f), seed + 2, true));
  problems.push_back(MakeProblem("fp16_full_s158", {1, 8, 2, 158, 64}, DType::kF16,
                                 Layer(LayerKind::kFull, 512, 0.125f), seed + 3, true));
  problems.push_back(MakeProblem("fp32_sliding_s300_d48", {1, 2, 2, 300, 48}, DType::kF32,
                                 Layer(LayerKind::kSliding, 100, 0.14f), seed + 4, true));
  problems.push_back(MakeProblem("bf16_sliding_s128_d128", {1, 4, 2, 128, 128}, DType::kBF16,
                                 Layer(LayerKind::kSliding, 32, 0.088f), seed + 5, true));
  // Its session (Q, K, V, O, dO kept for backward) is over the whole budget
  // while its tensors are well within the per-call limit.
  const int64_t over_len = std::max<int64_t>(64, budget / (16 * 64 * 4) + 64);
  std::unique_ptr<Problem> over =
      MakeProblem("over_budget", {1, 4, 4, over_len, 64}, DType::kF32,
                  Layer(LayerKind::kFull, 512, 0.125f), seed + 6, false);
  size_t largest_call = 0;
  for (const auto& p : problems) largest_call = std::max(largest_call, p->call_bytes);

  client::LocalClusterOptions options;
  options.cp = absl::GetFlag(FLAGS_cp);
  options.bin_dir = absl::GetFlag(FLAGS_bin_dir);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.ring_timeout_seconds = 30;
  options.coordinator_flags = {absl::StrCat("--memory_budget_bytes=", budget),
                               absl::StrCat("--session_ttl_seconds=", ttl),
                               absl::StrCat("--max_call_bytes=", int64_t{256} << 20)};
  absl::StatusOr<std::unique_ptr<client::LocalCluster>> cluster =
      client::LocalCluster::Start(options);
  if (!cluster.ok()) {
    std::fprintf(stderr, "soak: cannot start the cluster: %s\n",
                 cluster.status().ToString().c_str());
    return 1;
  }
  std::vector<RssTrace> traces = {{"coordinator", (*cluster)->coordinator_pid(), {}}};
  for (size_t r = 0; r < (*cluster)->worker_pids().size(); ++r) {
    traces.push_back({absl::StrCat("worker", r), (*cluster)->worker_pids()[r], {}});
  }
  std::printf(
      "soak: %d clients, cp %d, %s, budget %lld bytes, session TTL %.1f s, %zu inputs, seed "
      "%llu\n",
      clients, options.cp, absl::FormatDuration(duration).c_str(), static_cast<long long>(budget),
      ttl, problems.size(), static_cast<unsigned long long>(seed));
  std::fflush(stdout);

  Soak soak((*cluster)->address(), problems, *over, ttl);
  const Clock::time_point start = Clock::now();
  const Clock::time_point end = start + absl::ToChronoNanoseconds(duration);
  std::atomic<bool> running{true};
  std::thread sampler([&] {
    while (running.load()) {
      for (RssTrace& t : traces)
        t.samples.push_back({Seconds(start), server::testing::RssKiB(t.pid)});
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back(
        [&, i] { soak.RunClient(i, seed * 1000 + i, end, absl::GetFlag(FLAGS_max_calls)); });
  }
  for (std::thread& t : threads) t.join();
  const double seconds = Seconds(start);
  running = false;
  sampler.join();

  Tally& tally = soak.tally();
  bool ok = tally.failures.empty();
  for (const RssTrace& t : traces) {
    if (!server::testing::ChildRunning(t.pid)) {
      tally.Fail(absl::StrCat(t.name, " is gone"));
      ok = false;
    }
  }
  // Once every abandoned session is past its TTL, none is left behind.
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(ttl * 1000) + 500));
  int open_sessions = -1;
  {
    auto c = client::AttentionClient::Connect((*cluster)->address());
    absl::StatusOr<attention::v1::ClusterStatusResponse> s = c->Status();
    if (s.ok()) open_sessions = s->open_sessions();
  }
  if (open_sessions != 0) {
    tally.Fail(absl::StrCat(open_sessions, " sessions still open after every TTL passed"));
    ok = false;
  }

  // RSS flat after warm-up. The windows: the first and the last quarter of
  // the time after warm-up. After warm-up every code path, thread and
  // allocator arena has been used, and freed memory stays in the heap (the
  // daemons keep large buffers), so RSS tracks the peak of memory in use at
  // once. That peak may still rise by what more calls in flight at the same
  // moment than ever before hold: at most `clients` calls, each with its
  // tensors in and out of a process (2 x the largest call's bytes), plus
  // 8 MiB of allocator and thread-stack granularity. A leak shows up as
  // growth beyond that; the smallest leak per call it can miss is printed.
  const double warm = seconds * absl::GetFlag(FLAGS_warmup_fraction);
  const double quarter = (seconds - warm) / 4;
  const int64_t allowance_kib =
      static_cast<int64_t>(clients * 2 * largest_call / 1024) + (int64_t{8} << 10);
  std::vector<std::string> rss_figures;
  for (const RssTrace& t : traces) {
    const int64_t first = t.MaxIn(warm, warm + quarter);
    const int64_t last = t.MaxIn(seconds - quarter, seconds + 1);
    const int64_t start_kib = t.samples.empty() ? -1 : t.samples.front().second;
    const int64_t end_kib = t.samples.empty() ? -1 : t.samples.back().second;
    const bool flat = first > 0 && last > 0 && last <= first + allowance_kib;
    if (t.CountIn(warm, warm + quarter) < 3 || t.CountIn(seconds - quarter, seconds + 1) < 3) {
      tally.Fail(absl::StrCat(t.name, ": too few RSS samples to judge (run longer)"));
      ok = false;
    } else if (!flat) {
      tally.Fail(absl::StrCat(t.name, " RSS grew: last-quarter max ", last,
                              " KiB > first-quarter-after-warm-up max ", first, " KiB + ",
                              allowance_kib, " KiB"));
      ok = false;
    }
    const std::string n = t.name;
    rss_figures.push_back(absl::StrCat("figure: soak_rss_kib_", n, "_start ", start_kib));
    rss_figures.push_back(absl::StrCat("figure: soak_rss_kib_", n, "_first_quarter_max ", first));
    rss_figures.push_back(absl::StrCat("figure: soak_rss_kib_", n, "_last_quarter_max ", last));
    rss_figures.push_back(absl::StrCat("figure: soak_rss_kib_", n, "_end ", end_kib));
  }
  // Every daemon exits cleanly on SIGTERM after all of it.
  if (const absl::Status s = (*cluster)->Stop(); !s.ok()) {
    tally.Fail(absl::StrCat("cluster stop: ", s.ToString()));
    ok = false;
  }
  const std::map<std::string, int64_t> counts = tally.count;
  int64_t calls_between = 0;  // From the first window's end to the last's start.
  const double between = std::max(0.0, (seconds - quarter) - (warm + quarter));
  calls_between = static_cast<int64_t>(tally.calls * between / std::max(seconds, 1e-9));

  std::printf("soak: %lld calls in %.1f s (%.1f calls/s), %lld results verified\n",
              static_cast<long long>(tally.calls), seconds, tally.calls / seconds,
              static_cast<long long>(tally.verified));
  for (const auto& [what, n] : counts) {
    std::printf("  %-36s %lld\n", what.c_str(), static_cast<long long>(n));
  }
  // RSS over time, in tenths of the run (MiB), to see growth or a plateau.
  for (const RssTrace& t : traces) {
    std::string line;
    for (int i = 1; i <= 10; ++i) {
      absl::StrAppend(&line, " ", t.MaxIn(seconds * (i - 1) / 10, seconds * i / 10) / 1024);
    }
    std::printf("  rss MiB by tenth, %-12s%s\n", t.name.c_str(), line.c_str());
  }
  for (const std::string& f : tally.failures) std::printf("FAIL: %s\n", f.c_str());
  std::printf("figure: soak_seconds %.1f\n", seconds);
  std::printf("figure: soak_clients %d\n", clients);
  std::printf("figure: soak_calls_attempted %lld\n", static_cast<long long>(tally.calls));
  std::printf("figure: soak_calls_per_second %.1f\n", tally.calls / seconds);
  for (const auto& [what, n] : counts) {
    std::string name = what;
    std::replace(name.begin(), name.end(), ' ', '_');
    std::replace(name.begin(), name.end(), '-', '_');
    std::printf("figure: soak_%s %lld\n", name.c_str(), static_cast<long long>(n));
  }
  std::printf("figure: soak_results_verified %lld\n", static_cast<long long>(tally.verified));
  std::printf("figure: soak_sessions_abandoned %lld\n", static_cast<long long>(soak.abandoned()));
  std::printf("figure: soak_open_sessions_after_ttl %d\n", open_sessions);
  std::printf("figure: soak_unexpected_outcomes %zu\n", tally.failures.size());
  for (const std::string& f : rss_figures) std::printf("%s\n", f.c_str());
  std::printf("figure: soak_rss_allowance_kib %lld\n", static_cast<long long>(allowance_kib));
  if (calls_between > 0) {
    std::printf("figure: soak_smallest_leak_detected_bytes_per_call %lld\n",
                static_cast<long long>(allowance_kib * 1024 / calls_between));
  }

  std::printf("%s\n", ok ? "PASS: soak" : "FAIL: soak");
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace ringattn::soak

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ringattn soak: concurrent clients run sessions against a local cluster for --duration, "
      "checking every result against the fp64 oracle and the daemons' RSS.");
  absl::ParseCommandLine(argc, argv);
  return ringattn::soak::Run();
}
