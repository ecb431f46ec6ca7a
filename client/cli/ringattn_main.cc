// ringattn: the command-line client.
//
//   ringattn demo     start a local cluster (coordinator + --cp CPU workers on
//                     127.0.0.1), send a Gemma-4-like batch through a sliding
//                     and a full layer, forward and backward, check it
//                     against the fp64 oracle, print errors, throughput and
//                     per-rank step times, and shut the cluster down
//   ringattn serve    start a local cluster and keep it running (Ctrl-C stops)
//   ringattn status   --coordinator=HOST:PORT: the ring and its workers
//   ringattn synthetic --coordinator=HOST:PORT: the demo against a running
//                     cluster

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "kernels/cpu/convert.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "kernels/reference/synthetic_batch.h"

ABSL_FLAG(std::string, coordinator, "", "Coordinator address for status and synthetic.");
ABSL_FLAG(int, cp, 4, "Workers of a local cluster.");
ABSL_FLAG(int, worker_threads, 1, "Kernel threads per local worker.");
ABSL_FLAG(int64_t, seq_len, 1024, "Sequence length of the synthetic batch.");
ABSL_FLAG(int64_t, batch, 1, "Batch size of the synthetic batch.");
ABSL_FLAG(int64_t, heads, 4, "Query heads.");
ABSL_FLAG(int64_t, kv_heads, 2, "Key/value heads.");
ABSL_FLAG(int64_t, window, 512, "Sliding window of the sliding layer.");
ABSL_FLAG(std::string, dtype, "FP32", "FP32, BF16 or FP16.");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the synthetic batch.");

namespace ringattn::client {
namespace {

struct Layer {
  std::string name;
  int64_t head_dim;
  kernels::LayerConfig config;
};

bool Report(const char* what, const kernels::reference::ErrorStats& e, double tol) {
  const bool ok = e.Within(tol);
  std::printf("  %-4s max|err| %.3e  rel %.3e  tol %.1e  nan %lld  %s\n", what, e.max_abs_err,
              e.relative(), tol, static_cast<long long>(e.nans), ok ? "ok" : "FAIL");
  return ok;
}

attention::v1::LayerConfig Wire(const kernels::LayerConfig& l) {
  attention::v1::LayerConfig w;
  w.set_kind(l.kind == kernels::LayerKind::kSliding ? attention::v1::LayerConfig::KIND_SLIDING
                                                    : attention::v1::LayerConfig::KIND_FULL);
  w.set_window(l.window);
  w.set_scale(l.scale);
  return w;
}

void PrintMetrics(const char* what, const attention::v1::CallMetrics& m) {
  std::printf("  %-8s %8.1f ms  %7.2f GFLOP/s (pairs allowed by position)\n", what,
              1e3 * m.seconds(), m.flops_per_second() * 1e-9);
  for (const auto& r : m.ranks()) {
    std::printf("    rank %d: step %7.1f ms  compute %7.1f ms  comm wait %6.1f ms  sent %.1f MiB\n",
                r.rank(), 1e3 * r.total_seconds(), 1e3 * r.compute_seconds(),
                1e3 * r.comm_wait_seconds(), static_cast<double>(r.bytes_sent()) / 1048576.0);
  }
}

// The Gemma-4-like batch through the service, checked against the oracle.
int Synthetic(const std::string& address) {
  kernels::DType dtype;
  const std::string name = absl::GetFlag(FLAGS_dtype);
  if (name == "FP32") {
    dtype = kernels::DType::kF32;
  } else if (name == "BF16") {
    dtype = kernels::DType::kBF16;
  } else if (name == "FP16") {
    dtype = kernels::DType::kF16;
  } else {
    std::fprintf(stderr, "error: --dtype must be FP32, BF16 or FP16\n");
    return 2;
  }
  auto c = AttentionClient::Connect(address);
  absl::StatusOr<attention::v1::ClusterStatusResponse> status = c->Status();
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.status().ToString().c_str());
    return 1;
  }
  kernels::LayerConfig sliding;
  sliding.kind = kernels::LayerKind::kSliding;
  sliding.window = absl::GetFlag(FLAGS_window);
  kernels::LayerConfig full;
  const std::vector<Layer> layers = {{"sliding", 256, sliding}, {"full", 512, full}};
  kernels::reference::BatchShape shape{absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_heads),
                                       absl::GetFlag(FLAGS_kv_heads), absl::GetFlag(FLAGS_seq_len),
                                       0};
  std::printf("ringattn: B=%lld H=%lld Hkv=%lld S=%lld %s through a ring of %d workers at %s\n",
              static_cast<long long>(shape.batch), static_cast<long long>(shape.heads),
              static_cast<long long>(shape.kv_heads), static_cast<long long>(shape.seq_len),
              name.c_str(), status->cp(), address.c_str());
  std::printf("batch: two packed documents, one image block, right padding\n");
  bool all_ok = true;
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  for (const Layer& layer : layers) {
    shape.head_dim = layer.head_dim;
    kernels::LayerConfig config = layer.config;
    config.scale = 1.0f;  // Gemma 4: q/k norm instead of 1/sqrt(D).
    const auto batch = kernels::reference::MakeSyntheticBatch(
        shape, {kernels::reference::GemmaLikeLayout(shape.seq_len)}, dtype, seed++,
        kernels::reference::AmplitudeForLogitStd(2.0, layer.head_dim, config.scale));
    const auto q = kernels::reference::Encode(batch.q, dtype);
    const auto k = kernels::reference::Encode(batch.k, dtype);
    const auto v = kernels::reference::Encode(batch.v, dtype);
    const auto dout = kernels::reference::Encode(batch.dout, dtype);
    ForwardInputs in;
    in.dtype = name;
    in.batch = shape.batch;
    in.heads = shape.heads;
    in.kv_heads = shape.kv_heads;
    in.seq_len = shape.seq_len;
    in.head_dim = shape.head_dim;
    in.q = std::as_bytes(std::span(q));
    in.k = std::as_bytes(std::span(k));
    in.v = std::as_bytes(std::span(v));
    in.doc_ids = std::span<const int32_t>(batch.doc);
    in.vision_groups = std::span<const int32_t>(batch.vision);
    in.padding_mask = std::span<const uint8_t>(batch.padding);
    in.layer = Wire(config);
    absl::StatusOr<ForwardOutputs> f = c->Forward(in);
    if (!f.ok()) {
      std::fprintf(stderr, "error: forward: %s\n", f.status().ToString().c_str());
      return 1;
    }
    absl::StatusOr<BackwardOutputs> g =
        c->Backward(in, f->session.handle(), std::as_bytes(std::span(dout)));
    if (!g.ok()) {
      std::fprintf(stderr, "error: backward: %s\n", g.status().ToString().c_str());
      return 1;
    }
    (void)c->Release(f->session.handle());
    std::vector<float> out(f->out.size() / kernels::DTypeSize(dtype));
    kernels::cpu::ToF32(dtype, f->out.data(), static_cast<int64_t>(out.size()), out.data());
    const auto problem = kernels::reference::ToDenseProblem(batch, config);
    const auto want = kernels::reference::DenseForward(problem);
    const std::vector<double> dout64(batch.dout.begin(), batch.dout.end());
    const auto grads = kernels::reference::DenseBackward(problem, dout64);
    std::printf("%s layer (D=%lld): session %s, padded to %lld\n", layer.name.c_str(),
                static_cast<long long>(layer.head_dim), f->session.handle().c_str(),
                static_cast<long long>(f->session.padded_len()));
    const double out_tol = kernels::reference::OutputTolerance(dtype);
    const double grad_tol = kernels::reference::GradientTolerance(dtype);
    all_ok &= Report("O", kernels::reference::Compare(out, want.out), out_tol);
    all_ok &= Report("LSE", kernels::reference::Compare(f->lse, want.lse), 1e-5);
    all_ok &= Report("dQ", kernels::reference::Compare(g->dq, grads.dq), grad_tol);
    all_ok &= Report("dK", kernels::reference::Compare(g->dk, grads.dk), grad_tol);
    all_ok &= Report("dV", kernels::reference::Compare(g->dv, grads.dv), grad_tol);
    PrintMetrics("forward", f->metrics);
    PrintMetrics("backward", g->metrics);
  }
  std::printf("%s\n", all_ok ? "PASS: every result within tolerance of the fp64 oracle"
                             : "FAIL: some result outside tolerance");
  return all_ok ? 0 : 1;
}

absl::StatusOr<std::unique_ptr<LocalCluster>> StartLocal() {
  LocalClusterOptions options;
  options.cp = absl::GetFlag(FLAGS_cp);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  std::printf("starting a local cluster: 1 coordinator, %d CPU workers on 127.0.0.1\n", options.cp);
  return LocalCluster::Start(options);
}

int Run(const std::string& command) {
  if (command == "demo") {
    absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = StartLocal();
    if (!cluster.ok()) {
      std::fprintf(stderr, "error: %s\n", cluster.status().ToString().c_str());
      return 1;
    }
    const int rc = Synthetic((*cluster)->address());
    const absl::Status stopped = (*cluster)->Stop();
    std::printf("cluster stopped%s\n", stopped.ok() ? " cleanly" : ": not cleanly");
    return rc != 0 ? rc : (stopped.ok() ? 0 : 1);
  }
  if (command == "serve") {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = StartLocal();
    if (!cluster.ok()) {
      std::fprintf(stderr, "error: %s\n", cluster.status().ToString().c_str());
      return 1;
    }
    std::printf("coordinator at %s; Ctrl-C stops the cluster\n", (*cluster)->address().c_str());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    return (*cluster)->Stop().ok() ? 0 : 1;
  }
  const std::string address = absl::GetFlag(FLAGS_coordinator);
  if (address.empty()) {
    std::fprintf(stderr, "error: %s needs --coordinator=HOST:PORT\n", command.c_str());
    return 2;
  }
  if (command == "status") {
    auto c = AttentionClient::Connect(address);
    absl::StatusOr<attention::v1::ClusterStatusResponse> s = c->Status();
    if (!s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.status().ToString().c_str());
      return 1;
    }
    std::printf("ring of %d, %s, generation %llu, %d open sessions\n", s->cp(),
                s->ring_ready() ? "ready" : "not ready",
                static_cast<unsigned long long>(s->ring_generation()), s->open_sessions());
    for (const auto& w : s->workers()) {
      std::printf("  rank %d  %s  %s\n", w.rank(), w.address().c_str(), w.up() ? "up" : "down");
    }
    return 0;
  }
  if (command == "synthetic") return Synthetic(address);
  std::fprintf(stderr, "error: unknown command '%s' (demo, serve, status, synthetic)\n",
               command.c_str());
  return 2;
}

}  // namespace
}  // namespace ringattn::client

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ringattn COMMAND [flags]\n"
      "  demo       start a local cluster, run a Gemma-4-like batch forward and backward,\n"
      "             check it against the fp64 oracle, stop the cluster\n"
      "  serve      start a local cluster and keep it running until Ctrl-C\n"
      "  status     show a running cluster (--coordinator)\n"
      "  synthetic  the demo's batch against a running cluster (--coordinator)");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string command = args.size() > 1 ? args[1] : "demo";
  return ringattn::client::Run(command);
}
