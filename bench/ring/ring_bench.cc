// Ring benchmark: forward + backward of one causal full layer (B=1, H=8,
// Hkv=4, S=4096, D=128, fp32) as a Gloo ring of cp = 2 and cp = 4 separate
// processes on 127.0.0.1 (one kernel thread each), under the contiguous and
// the zigzag shard layouts, against one process doing the same total work
// on all cores, in one run. Prints per-rank compute and step times, ring
// efficiency (compute / step time), the work imbalance of each layout
// (last / first and max / mean rank compute), each layout's speedup over
// contiguous, bytes per step against the theoretical chunk size, and the
// fraction of communication hidden behind compute. Then a causal sliding
// layer (W = 512, L = 4096) on contiguous shards, whole chunks against the
// halo exchange: bytes sent and time. Then the contiguous full layer again
// over Gloo TCP and over shared memory: a bare chunk exchange and the step.
// Ends with `figure: <name> <value>` lines (contiguous: ring_cp<N>_*,
// zigzag: ring_cp<N>_zigzag_*, sliding: ring_sliding_cp<N>_*, transports:
// ring_cp<N>_shm_vs_gloo_*).
//
//   build/release/bench/ringattn_ring_bench [--seq_len=4096] [--repeat=2]
//       [--sliding_shard_len=4096] [--sliding_window=512]
//
// The binary re-runs itself with --rank=N for each rank.

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kernels/backends.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/synthetic_batch.h"
#include "server/batch/shard_layout.h"
#include "server/ring/ring_attention.h"
#include "server/ring/transports/gloo_transport.h"
#include "server/ring/transports/shm_transport.h"

ABSL_FLAG(int64_t, seq_len, 4096, "Sequence length S (a multiple of 8).");
ABSL_FLAG(int, repeat, 2, "Timed forward+backward calls per configuration (best kept).");
ABSL_FLAG(int, rank, -1, "Internal: run as this rank of a ring.");
ABSL_FLAG(int, cp, 0, "Internal: ring size of the rank run.");
ABSL_FLAG(std::string, dir, "", "Internal: store and report directory of the rank run.");
ABSL_FLAG(std::string, layout, "contiguous", "Internal: shard layout of the rank run.");
ABSL_FLAG(int64_t, window, 0, "Internal: sliding window of the rank run (0: full layer).");
ABSL_FLAG(bool, halo, true, "Internal: halo exchange in the rank run.");
ABSL_FLAG(std::string, transport, "gloo", "Internal: ring transport of the rank run (gloo, shm).");
ABSL_FLAG(int64_t, sliding_shard_len, 4096,
          "Shard length L of the sliding-layer runs (S = cp * L; a multiple of 8).");
ABSL_FLAG(int64_t, sliding_window, 512, "Window W of the sliding-layer runs.");

extern char** environ;

namespace ringattn::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kB = 1, kH = 8, kHkv = 4, kD = 128;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

kernels::reference::SyntheticBatch MakeBatch(int64_t seq_len) {
  kernels::reference::RowLayout layout;
  layout.doc_lengths = {seq_len};
  return kernels::reference::MakeSyntheticBatch({kB, kH, kHkv, seq_len, kD}, {layout},
                                                kernels::DType::kF32, 17);
}

// Full causal when `window` is 0, else causal sliding.
kernels::LayerConfig Layer(int64_t window) {
  kernels::LayerConfig layer;
  layer.scale = 0.088388f;  // 1 / sqrt(128)
  if (window > 0) {
    layer.kind = kernels::LayerKind::kSliding;
    layer.window = window;
  }
  return layer;
}

// One rank: connect, time a bare K/V exchange (the communication a step
// would cost with nothing to hide it), then time forward + backward calls.
// t [outer, S, inner] at the positions of `segments`, in their order.
template <typename T>
std::vector<T> Gather(const std::vector<T>& t, int64_t outer, int64_t seq_len, int64_t inner,
                      const std::vector<batch::Segment>& segments) {
  std::vector<T> out;
  for (int64_t o = 0; o < outer; ++o) {
    for (const batch::Segment& s : segments) {
      out.insert(out.end(), t.begin() + (o * seq_len + s.start) * inner,
                 t.begin() + (o * seq_len + s.start + s.len) * inner);
    }
  }
  return out;
}

int RunRank(int rank, int cp, const std::string& dir, int64_t seq_len, int repeat,
            batch::LayoutKind kind, int64_t window, bool halo) {
  using kernels::reference::Encode;
  const int64_t L = seq_len / cp;
  absl::StatusOr<batch::ShardLayout> layout = batch::ShardLayout::Make(kind, seq_len, L, cp);
  if (!layout.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, layout.status().ToString().c_str());
    return 3;
  }
  const std::vector<batch::Segment>& segs = layout->Segments(rank);
  std::vector<uint8_t> q, k, v, dout, padding;
  std::vector<int32_t> doc, vision;
  const kernels::DType dtype = kernels::DType::kF32;
  {
    // The whole batch only lives long enough to cut this rank's shard.
    const auto batch = MakeBatch(seq_len);
    q = Encode(Gather(batch.q, kB * kH, seq_len, kD, segs), dtype);
    k = Encode(Gather(batch.k, kB * kHkv, seq_len, kD, segs), dtype);
    v = Encode(Gather(batch.v, kB * kHkv, seq_len, kD, segs), dtype);
    dout = Encode(Gather(batch.dout, kB * kH, seq_len, kD, segs), dtype);
    doc = Gather(batch.doc, kB, seq_len, 1, segs);
    vision = Gather(batch.vision, kB, seq_len, 1, segs);
    padding = Gather(batch.padding, kB, seq_len, 1, segs);
  }
  ring::ShardRef shard{{dtype, kB, kH, kHkv, L, L, kD},
                       std::as_bytes(std::span(q)),
                       std::as_bytes(std::span(k)),
                       std::as_bytes(std::span(v)),
                       doc,
                       vision,
                       padding};

  ring::FileStore store(dir);
  absl::StatusOr<std::unique_ptr<ring::Transport>> transport;
  if (absl::GetFlag(FLAGS_transport) == "shm") {
    ring::ShmOptions options;
    options.rank = rank;
    options.size = cp;
    transport = ring::ConnectShm(store, options);
  } else {
    ring::GlooOptions options;
    options.rank = rank;
    options.size = cp;
    transport = ring::ConnectGloo(store, options);
  }
  if (!transport.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, transport.status().ToString().c_str());
    return 3;
  }
  auto cpu = kernels::MakeCpuBackend(1);
  kernels::ChunkBackend& backend = **cpu;

  // Bare exchange of one K/V chunk message, no compute.
  const size_t chunk_bytes = 2 * q.size() / kH * kHkv + static_cast<size_t>(kB * L) * 9;
  std::vector<std::byte> send(chunk_bytes), recv(chunk_bytes);
  double bare = 1e30;
  for (int i = 0; i < 5; ++i) {
    const Clock::time_point t0 = Clock::now();
    auto r = (*transport)->Recv((rank + cp - 1) % cp, 1000 + i, recv);
    auto s = (*transport)->Send((rank + 1) % cp, 1000 + i, send);
    if (!r.ok() || !s.ok() || !(*s)->Wait(absl::Seconds(60)).ok() ||
        !(*r)->Wait(absl::Seconds(60)).ok()) {
      std::fprintf(stderr, "rank %d: bare exchange failed\n", rank);
      return 3;
    }
    bare = std::min(bare, Since(t0));
  }

  // Peak RSS from here on (Linux: writing 5 to clear_refs resets VmHWM).
  std::ofstream("/proc/self/clear_refs") << "5";
  ring::RingCall call;
  call.layer = Layer(window);
  call.generation = 1;
  call.layout = kind;
  call.halo_exchange = halo;
  double best_total = 1e30;
  ring::RingStats best_fwd, best_bwd;
  for (int i = 0; i < repeat; ++i) {
    call.sequence = static_cast<uint64_t>(i);
    auto fwd = ring::RingForward(**transport, backend, shard, call);
    if (!fwd.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, fwd.status().ToString().c_str());
      return 3;
    }
    auto bwd = ring::RingBackward(**transport, backend, shard, fwd->out,
                                  std::as_bytes(std::span(dout)), fwd->lse, call);
    if (!bwd.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, bwd.status().ToString().c_str());
      return 3;
    }
    const double total = fwd->stats.total_seconds + bwd->stats.total_seconds;
    if (total < best_total) {
      best_total = total;
      best_fwd = fwd->stats;
      best_bwd = bwd->stats;
    }
  }
  // Report: total, compute, wait, steps with wait and bytes, bare exchange.
  double peak_rss = 0.0;
  {
    std::ifstream status("/proc/self/status");
    std::string key;
    while (status >> key) {
      if (key == "VmHWM:") {
        status >> peak_rss;
        peak_rss *= 1024.0;
        break;
      }
    }
  }
  // The shard's own tensors: Q, K, V, dO in, O, LSE, dQ, dK, dV out (fp32).
  const double shard_bytes = static_cast<double>(q.size() + k.size() + v.size() + dout.size()) +
                             3.0 * q.size() / kD + 2.0 * static_cast<double>(q.size() + k.size());
  std::ofstream out(dir + "/report" + std::to_string(rank));
  const int steps = static_cast<int>(best_fwd.steps.size());
  out << best_total << " " << best_fwd.compute_seconds + best_bwd.compute_seconds << " "
      << best_fwd.wait_seconds << " " << steps << " " << best_fwd.bytes_sent << " " << bare << " "
      << chunk_bytes << " " << best_fwd.total_seconds << " " << best_bwd.total_seconds << " "
      << peak_rss << " " << shard_bytes << " " << best_bwd.bytes_sent << "\n";
  return out ? 0 : 4;
}

struct RankReport {
  double total, compute, fwd_wait;
  int steps;
  int64_t fwd_bytes;
  double bare;
  int64_t chunk_bytes;
  double fwd_total, bwd_total;
  double peak_rss, shard_bytes;
  int64_t bwd_bytes;
};

// One ring of `cp` processes of this binary; its ranks' reports, or an
// empty vector when a rank failed.
std::vector<RankReport> RunRing(const char* self, int cp, int64_t seq_len, int repeat,
                                const std::string& layout_name, int64_t window, bool halo,
                                const std::string& transport = "gloo") {
  char tmpl[] = "/tmp/ringattn_ring_bench_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  std::vector<pid_t> pids;
  for (int r = 0; r < cp; ++r) {
    std::vector<std::string> args = {self,
                                     "--rank=" + std::to_string(r),
                                     "--cp=" + std::to_string(cp),
                                     "--dir=" + dir,
                                     "--seq_len=" + std::to_string(seq_len),
                                     "--repeat=" + std::to_string(repeat),
                                     "--layout=" + layout_name,
                                     "--window=" + std::to_string(window),
                                     std::string("--halo=") + (halo ? "true" : "false"),
                                     "--transport=" + transport};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    if (posix_spawn(&pid, self, nullptr, nullptr, argv.data(), environ) != 0) break;
    pids.push_back(pid);
  }
  bool ok = static_cast<int>(pids.size()) == cp;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  std::vector<RankReport> reports(ok ? cp : 0);
  for (int r = 0; r < static_cast<int>(reports.size()); ++r) {
    std::ifstream in(dir + "/report" + std::to_string(r));
    RankReport& x = reports[r];
    in >> x.total >> x.compute >> x.fwd_wait >> x.steps >> x.fwd_bytes >> x.bare >> x.chunk_bytes >>
        x.fwd_total >> x.bwd_total >> x.peak_rss >> x.shard_bytes >> x.bwd_bytes;
    if (!in) reports.clear();
  }
  std::filesystem::remove_all(dir);
  return reports;
}

// Sliding layers: the same contiguous ring with whole chunks travelling and
// with the halo exchange, bytes and time side by side.
void RunSliding(const char* self, int repeat, std::vector<std::string>& figures) {
  const int64_t L = absl::GetFlag(FLAGS_sliding_shard_len);
  const int64_t W = absl::GetFlag(FLAGS_sliding_window);
  for (int cp : {2, 4}) {
    const int64_t S = cp * L;
    double seconds[2] = {0, 0};
    int64_t bytes[2] = {0, 0};
    for (bool halo : {false, true}) {
      const std::vector<RankReport> reports = RunRing(self, cp, S, repeat, "contiguous", W, halo);
      if (reports.empty()) {
        std::fprintf(stderr, "error: a rank of the sliding cp=%d ring failed\n", cp);
        return;
      }
      for (const RankReport& x : reports) {
        seconds[halo] = std::max(seconds[halo], x.total);
        bytes[halo] += x.fwd_bytes + x.bwd_bytes;
      }
    }
    std::printf(
        "sliding layer W=%lld, L=%lld, cp=%d: whole chunks %.3f s and %lld bytes sent "
        "(fwd+bwd, all ranks); halo exchange %.3f s and %lld bytes: %.3f of the bytes, "
        "speedup %.2f\n",
        static_cast<long long>(W), static_cast<long long>(L), cp, seconds[0],
        static_cast<long long>(bytes[0]), seconds[1], static_cast<long long>(bytes[1]),
        static_cast<double>(bytes[1]) / static_cast<double>(bytes[0]), seconds[0] / seconds[1]);
    const std::string p = "ring_sliding_cp" + std::to_string(cp) + "_";
    figures.push_back("figure: " + p + "halo_bytes_vs_whole_chunks " +
                      std::to_string(static_cast<double>(bytes[1]) / bytes[0]));
    figures.push_back("figure: " + p + "halo_speedup " + std::to_string(seconds[0] / seconds[1]));
  }
}

// The two host transports under the same contiguous ring: a bare K/V chunk
// exchange and the forward+backward step, Gloo TCP loopback against shared
// memory, side by side.
void RunTransports(const char* self, int64_t seq_len, int repeat,
                   std::vector<std::string>& figures) {
  for (int cp : {2, 4}) {
    double bare[2] = {0, 0}, step[2] = {0, 0};
    int64_t chunk = 0;
    for (int t = 0; t < 2; ++t) {
      const std::vector<RankReport> reports =
          RunRing(self, cp, seq_len, repeat, "contiguous", 0, true, t == 0 ? "gloo" : "shm");
      if (reports.empty()) {
        std::fprintf(stderr, "error: a rank of the cp=%d %s ring failed\n", cp,
                     t == 0 ? "gloo" : "shm");
        return;
      }
      for (const RankReport& x : reports) {
        bare[t] = std::max(bare[t], x.bare);
        step[t] = std::max(step[t], x.total);
        chunk = x.chunk_bytes;
      }
    }
    const double mib = static_cast<double>(chunk) / 1048576.0;
    std::printf(
        "transports, cp=%d: exchange of a %.1f MiB chunk (every rank at once): Gloo TCP %.4f s "
        "(%.0f MiB/s), shared memory %.4f s (%.0f MiB/s), %.2fx; forward+backward step %.3f s "
        "vs %.3f s, %.2fx\n",
        cp, mib, bare[0], mib / bare[0], bare[1], mib / bare[1], bare[0] / bare[1], step[0],
        step[1], step[0] / step[1]);
    const std::string p = "ring_cp" + std::to_string(cp) + "_";
    figures.push_back("figure: " + p + "shm_vs_gloo_exchange_speedup " +
                      std::to_string(bare[0] / bare[1]));
    figures.push_back("figure: " + p + "shm_vs_gloo_step_speedup " +
                      std::to_string(step[0] / step[1]));
  }
}

int RunDriver(const char* self, int64_t seq_len, int repeat) {
  std::printf(
      "ring benchmark: B=%lld H=%lld Hkv=%lld S=%lld D=%lld fp32, causal full layer, "
      "%u cores\n",
      static_cast<long long>(kB), static_cast<long long>(kH), static_cast<long long>(kHkv),
      static_cast<long long>(seq_len), static_cast<long long>(kD),
      std::thread::hardware_concurrency());
  // Baseline: the same total work in one process on every core.
  auto cpu = kernels::MakeCpuBackend();
  const auto batch = MakeBatch(seq_len);
  double single = 1e30;
  for (int i = 0; i < repeat; ++i) {
    auto r = kernels::reference::RunChunked(batch, Layer(0), 1, **cpu);
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s\n", r.status().ToString().c_str());
      return 1;
    }
    single = std::min(single, r->forward_seconds + r->backward_seconds);
  }
  std::printf("one process, %u threads: forward+backward %.3f s\n",
              std::thread::hardware_concurrency(), single);

  std::vector<std::string> figures;
  for (int cp : {2, 4}) {
    double contiguous_step = 0.0;
    for (batch::LayoutKind kind : {batch::LayoutKind::kContiguous, batch::LayoutKind::kZigzag}) {
      const std::string layout_name(batch::LayoutName(kind));
      const Clock::time_point t0 = Clock::now();
      const std::vector<RankReport> reports =
          RunRing(self, cp, seq_len, repeat, layout_name, /*window=*/0, /*halo=*/true);
      if (reports.empty()) {
        std::fprintf(stderr, "error: a rank of the cp=%d ring failed\n", cp);
        return 1;
      }
      std::printf("cp=%d ring, %s layout (%d processes, wall %.1f s incl. start-up):\n", cp,
                  layout_name.c_str(), cp, Since(t0));
      for (int r = 0; r < cp; ++r) {
        const RankReport& x = reports[r];
        std::printf(
            "  rank %d: fwd+bwd %.3f s, compute %.3f s, fwd comm wait %.4f s, bare "
            "exchange %.4f s, peak RSS in the ring %.0f MiB (%.2fx its shard's tensors, "
            "process and libraries included)\n",
            r, x.total, x.compute, x.fwd_wait, x.bare, x.peak_rss / 1048576.0,
            x.peak_rss / x.shard_bytes);
      }
      // Hidden communication, per rank: the share of a bare exchange that did
      // not show up as waiting after compute. The wait also holds time spent
      // on slower peers (causal imbalance), so this is a lower bound.
      double step_time = 0.0, compute_sum = 0.0, hidden_sum = 0.0;
      for (const RankReport& x : reports) {
        step_time = std::max(step_time, x.total);
        compute_sum += x.compute;
        const double wait_per_step = x.fwd_wait / std::max(1, x.steps - 1);
        hidden_sum += std::clamp(1.0 - std::min(wait_per_step, x.bare) / x.bare, 0.0, 1.0);
      }
      const double efficiency = compute_sum / (cp * step_time);
      const double imbalance = reports.back().compute / reports.front().compute;
      const double mean_compute = compute_sum / cp;
      double max_compute = 0.0;
      for (const RankReport& x : reports) max_compute = std::max(max_compute, x.compute);
      // Theory: one K/V chunk (fp32 K and V of Hkv heads, L tokens) plus 9
      // bytes of metadata per token, aligned to 8 bytes.
      const int64_t L = seq_len / cp;
      const int64_t theory =
          2 * kB * kHkv * L * kD * 4 + (2 * ((kB * L * 4 + 7) / 8 * 8)) + (kB * L + 7) / 8 * 8;
      const double per_step = static_cast<double>(reports[0].fwd_bytes) / (reports[0].steps - 1);
      const double hidden = hidden_sum / cp;
      if (kind == batch::LayoutKind::kContiguous) contiguous_step = step_time;
      const double over_contiguous = contiguous_step / step_time;
      std::printf(
          "  step time (slowest rank) %.3f s; ring efficiency %.2f; compute last/first "
          "rank %.2f, max/mean %.2f; speedup over contiguous %.2f; bytes per forward step %.0f "
          "(theory %lld); communication hidden >= %.2f\n",
          step_time, efficiency, imbalance, max_compute / mean_compute, over_contiguous, per_step,
          static_cast<long long>(theory), hidden);
      const std::string p = "ring_cp" + std::to_string(cp) + "_" +
                            (kind == batch::LayoutKind::kContiguous ? "" : layout_name + "_");
      auto fig = [&](const std::string& name, double value) {
        std::ostringstream s;
        s << "figure: " << p << name << " " << value;
        figures.push_back(s.str());
      };
      fig("fwd_bwd_seconds", step_time);
      fig("speedup_vs_one_process", single / step_time);
      fig("efficiency", efficiency);
      fig("imbalance_last_over_first_rank", imbalance);
      fig("imbalance_max_over_mean", max_compute / mean_compute);
      fig("bytes_per_step_vs_theory", per_step / static_cast<double>(theory));
      fig("comm_hidden_fraction", hidden);
      double rss_ratio = 0.0;
      for (const RankReport& x : reports)
        rss_ratio = std::max(rss_ratio, x.peak_rss / x.shard_bytes);
      fig("peak_rss_vs_shard_tensors_max_rank", rss_ratio);
      if (kind != batch::LayoutKind::kContiguous) fig("speedup_over_contiguous", over_contiguous);
    }
  }
  RunSliding(self, repeat, figures);
  RunTransports(self, seq_len, repeat, figures);
  std::printf("\n");
  for (const std::string& f : figures) std::printf("%s\n", f.c_str());
  std::printf("figure: ring_one_process_fwd_bwd_seconds %.3f\n", single);
  return 0;
}

}  // namespace
}  // namespace ringattn::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Benchmarks ring attention over Gloo processes against one process doing the same work.");
  absl::ParseCommandLine(argc, argv);
  const int64_t seq_len = absl::GetFlag(FLAGS_seq_len);
  const int repeat = std::max(1, absl::GetFlag(FLAGS_repeat));
  if (seq_len < 8 || seq_len % 8 != 0) {
    std::fprintf(stderr, "error: --seq_len must be a positive multiple of 8\n");
    return 2;
  }
  const int64_t sliding_len = absl::GetFlag(FLAGS_sliding_shard_len);
  if (sliding_len < 8 || sliding_len % 8 != 0 || absl::GetFlag(FLAGS_sliding_window) < 1) {
    std::fprintf(stderr,
                 "error: --sliding_shard_len must be a positive multiple of 8 and "
                 "--sliding_window positive\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_rank) >= 0) {
    const std::string layout = absl::GetFlag(FLAGS_layout);
    if (layout != "contiguous" && layout != "zigzag") {
      std::fprintf(stderr, "error: --layout must be contiguous or zigzag\n");
      return 2;
    }
    return ringattn::bench::RunRank(absl::GetFlag(FLAGS_rank), absl::GetFlag(FLAGS_cp),
                                    absl::GetFlag(FLAGS_dir), seq_len, repeat,
                                    layout == "zigzag" ? ringattn::batch::LayoutKind::kZigzag
                                                       : ringattn::batch::LayoutKind::kContiguous,
                                    absl::GetFlag(FLAGS_window), absl::GetFlag(FLAGS_halo));
  }
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  return ringattn::bench::RunDriver(self, seq_len, repeat);
}
