// CPU attention kernel benchmark (issue: foundation and CPU kernels).
//
// Forward and backward of the chunk kernels on one whole sequence (B=1,
// H=16, Hkv=8, S=8192) for D in {128, 256}, full causal and sliding W=512,
// and D=128 causal over packed documents of 1024 tokens, fp32 and bf16. In the same run it measures
// this machine's sgemm peak (OpenBLAS, all cores) and two dense baselines that materialize the S x
// S scores: a naive one (plain loops) and one on OpenBLAS sgemm. FLOPs count only the pairs the
// mask allows: 4*B*H*S^2*D*fraction forward, 2.5x that backward. Ends with `figure: <name> <value>`
// lines.
//
//   build/release/bench/ringattn_attention_bench [--seq_len=8192] [--quick]

#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/backends.h"
#include "kernels/convert.h"
#include "kernels/mask.h"
#include "kernels/reference/synthetic_batch.h"

namespace ringattn::kernels {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double PeakRssBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;
}

struct Config {
  int64_t head_dim;
  bool sliding;
  DType dtype;
  int64_t doc_len = 0;  // Packed documents of this length (causal); 0: one document.
  std::string Name() const {
    return std::string(dtype == DType::kF32 ? "fp32" : "bf16") + "_d" + std::to_string(head_dim) +
           (sliding       ? "_sliding512"
            : doc_len > 0 ? "_docs" + std::to_string(doc_len)
                          : "_causal");
  }
  LayerConfig Layer() const {
    LayerConfig layer;
    layer.kind = sliding ? LayerKind::kSliding : LayerKind::kFull;
    layer.window = 512;
    layer.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    return layer;
  }
};

// Fraction of (query, key) pairs a causal/sliding mask over documents of
// doc_len tokens (0: one document) allows.
double AllowedFraction(int64_t s, const LayerConfig& layer, int64_t doc_len) {
  const MaskRule rule = MaskRuleFor(layer);
  double allowed = 0.0;
  for (int64_t q = 0; q < s; ++q) {
    int64_t lo = rule.windowed ? std::max<int64_t>(0, q - rule.window + 1) : 0;
    if (doc_len > 0) lo = std::max(lo, q / doc_len * doc_len);
    allowed += static_cast<double>(q - lo + 1);
  }
  return allowed / (static_cast<double>(s) * static_cast<double>(s));
}

// One benchmark problem: the whole sequence as a single chunk.
struct Problem {
  int64_t B = 1, H = 16, Hkv = 8, S, D;
  DType dtype;
  std::vector<uint8_t> q, k, v, out, dout;
  std::vector<int32_t> doc, vision;
  std::vector<uint8_t> padding;
  std::vector<float> o32, lse, dq, dk, dv;

  int64_t doc_len;

  Problem(int64_t s, int64_t d, DType dt, int64_t docs) : S(s), D(d), dtype(dt), doc_len(docs) {
    reference::BatchShape shape{B, H, Hkv, S, D};
    reference::RowLayout layout;
    layout.doc_lengths = {S};
    if (doc_len > 0) layout.doc_lengths.assign(S / doc_len, doc_len);
    const reference::SyntheticBatch batch =
        reference::MakeSyntheticBatch(shape, {layout}, dtype, 7);
    q = reference::Encode(batch.q, dtype);
    k = reference::Encode(batch.k, dtype);
    v = reference::Encode(batch.v, dtype);
    dout = reference::Encode(batch.dout, dtype);
    doc = batch.doc;
    vision = batch.vision;
    padding = batch.padding;
    o32.resize(B * H * S * D);
    lse.resize(B * H * S);
    dq.resize(B * H * S * D);
    dk.resize(B * Hkv * S * D);
    dv.resize(B * Hkv * S * D);
  }
  TensorRef Ref(const std::vector<uint8_t>& t, int64_t heads) const {
    return TensorRef{dtype, {B, heads, S, D}, t.data(), t.size()};
  }
  TokenMetaRef Meta() const { return TokenMetaRef{doc, vision, padding, 0}; }

  // Bytes of every tensor a caller holds for this problem.
  double TensorBytes() const {
    double bytes = 0.0;
    for (const auto* t : {&q, &k, &v, &out, &dout}) bytes += static_cast<double>(t->size());
    bytes += static_cast<double>(B * H * S * D) * DTypeSize(dtype);  // out, once filled
    for (const auto* t : {&o32, &lse, &dq, &dk, &dv}) bytes += 4.0 * t->size();
    return bytes + static_cast<double>(doc.size() * 9);
  }

  absl::Status Forward(const LayerConfig& layer, ChunkBackend& backend) {
    ForwardChunkArgs a{Ref(q, H), Ref(k, Hkv), Ref(v, Hkv), Meta(), Meta(), layer, o32, lse};
    absl::Status s = backend.Forward(a);
    out.resize(o32.size() * DTypeSize(dtype));
    FromF32(dtype, o32.data(), static_cast<int64_t>(o32.size()), out.data());
    return s;
  }
  absl::Status Backward(const LayerConfig& layer, ChunkBackend& backend) {
    BackwardChunkArgs a;
    a.q = Ref(q, H);
    a.k = Ref(k, Hkv);
    a.v = Ref(v, Hkv);
    a.out = Ref(out, H);
    a.dout = Ref(dout, H);
    a.lse = lse;
    a.q_meta = a.kv_meta = Meta();
    a.layer = layer;
    a.dq = dq;
    a.dk = dk;
    a.dv = dv;
    return backend.Backward(a);
  }
};

// sgemm peak of this machine: the best of several square products of a few
// sizes on all cores. Measured before and after the kernels and the larger
// figure kept, so a noisy moment cannot flatter the ratios.
double MeasureSgemmGflops() {
  double best = 0.0;
  for (int n : {1536, 2048, 3072}) {
    std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
    for (int rep = 0; rep < 4; ++rep) {
      const Clock::time_point t0 = Clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                  n, 0.0f, c.data(), n);
      best = std::max(best, 2.0 * n * n * n / Seconds(t0) * 1e-9);
    }
  }
  return best;
}

// Dense attention of `rows` query rows of one head against all S keys with
// the S-wide score rows materialized; cost per row is the same for every
// row, so its rate extrapolates to the whole problem. fp32, causal.
double NaiveDenseSeconds(const std::vector<float>& q, const std::vector<float>& k,
                         const std::vector<float>& v, int64_t S, int64_t D, int64_t rows,
                         float scale) {
  std::vector<float> scores(rows * S);
  std::vector<float> out(rows * D, 0.0f);
  const Clock::time_point t0 = Clock::now();
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t qi = S - rows + i;
    for (int64_t j = 0; j < S; ++j) {
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += q[qi * D + d] * k[j * D + d];
      scores[i * S + j] = j <= qi ? dot * scale : -INFINITY;
    }
    float m = -INFINITY;
    for (int64_t j = 0; j < S; ++j) m = std::max(m, scores[i * S + j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < S; ++j) sum += scores[i * S + j] = std::exp(scores[i * S + j] - m);
    for (int64_t j = 0; j < S; ++j) {
      const float p = scores[i * S + j] / sum;
      for (int64_t d = 0; d < D; ++d) out[i * D + d] += p * v[j * D + d];
    }
  }
  benchmark::DoNotOptimize(out.data());
  return Seconds(t0);
}

// The same with both products on OpenBLAS sgemm (one head, all rows).
double BlasDenseSeconds(const std::vector<float>& q, const std::vector<float>& k,
                        const std::vector<float>& v, int64_t S, int64_t D, float scale) {
  std::vector<float> scores(S * S);
  std::vector<float> out(S * D);
  const Clock::time_point t0 = Clock::now();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, D, scale, q.data(), D, k.data(), D,
              0.0f, scores.data(), S);
  for (int64_t i = 0; i < S; ++i) {
    float* row = &scores[i * S];
    float m = -INFINITY;
    for (int64_t j = 0; j <= i; ++j) m = std::max(m, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j <= i; ++j) sum += row[j] = std::exp(row[j] - m);
    for (int64_t j = 0; j <= i; ++j) row[j] /= sum;
    for (int64_t j = i + 1; j < S; ++j) row[j] = 0.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, D, S, 1.0f, scores.data(), S, v.data(),
              D, 0.0f, out.data(), D);
  benchmark::DoNotOptimize(out.data());
  return Seconds(t0);
}

struct Results {
  std::map<std::string, double> gflops;   // name -> GFLOP/s
  std::map<std::string, double> seconds;  // name -> seconds per iteration
};

int Main(int argc, char** argv) {
  int64_t seq_len = 8192;
  bool quick = false;
  bool dense = true;
  std::string isa;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--seq_len=", 10) == 0) {
      seq_len = std::atoll(argv[i] + 10);
    } else if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--skip_dense") == 0) {
      dense = false;
    } else if (std::strncmp(argv[i], "--isa=", 6) == 0) {
      isa = argv[i] + 6;
    } else if (std::strcmp(argv[i], "--help") == 0) {
      std::printf(
          "usage: %s [--seq_len=N] [--quick] [--skip_dense] [--isa=NAME] [google benchmark "
          "flags]\n"
          "  --seq_len  sequence length S (default 8192, a multiple of 1024)\n"
          "  --quick    only D=128 fp32 (smoke run)\n"
          "  --skip_dense  leave out the dense baselines\n"
          "  --isa      instruction set of the kernels (default: the best supported)\n",
          argv[0]);
      return 0;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (seq_len < 1024 || seq_len % 1024 != 0) {
    std::fprintf(stderr, "error: --seq_len must be a positive multiple of 1024\n");
    return 2;
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());

  absl::StatusOr<std::unique_ptr<ChunkBackend>> backend = MakeCpuBackend(0, isa);
  if (!backend.ok()) {
    std::fprintf(stderr, "error: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  std::printf("threads %u, %s, S=%lld\n", std::thread::hardware_concurrency(),
              (*backend)->name().c_str(), static_cast<long long>(seq_len));
  const double sgemm_before = MeasureSgemmGflops();
  std::printf("sgemm peak before the kernels (OpenBLAS, best of 12): %.1f GFLOP/s\n", sgemm_before);

  std::vector<Config> configs;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (int64_t d : {128, 256}) {
      for (bool sliding : {false, true}) {
        if (quick && (dt != DType::kF32 || d != 128)) continue;
        configs.push_back({d, sliding, dt});
      }
    }
    if (!quick || dt == DType::kF32) configs.push_back({128, false, dt, 1024});
  }

  Results results;
  // One problem alive at a time (configs sharing D and dtype run back to
  // back), so peak RSS shows one problem's tensors plus kernel workspace.
  std::unique_ptr<Problem> problem;
  double max_tensor_bytes = 0.0;
  auto problem_for = [&](const Config& c) -> Problem& {
    if (!problem || problem->D != c.head_dim || problem->dtype != c.dtype ||
        problem->doc_len != c.doc_len) {
      problem.reset();
      problem = std::make_unique<Problem>(seq_len, c.head_dim, c.dtype, c.doc_len);
      max_tensor_bytes = std::max(max_tensor_bytes, problem->TensorBytes());
    }
    return *problem;
  };
  for (const Config& c : configs) {
    const double fwd_flops = 4.0 * 16 * seq_len * static_cast<double>(seq_len) * c.head_dim *
                             AllowedFraction(seq_len, c.Layer(), c.doc_len);
    for (bool bwd : {false, true}) {
      const std::string name = std::string(bwd ? "bwd_" : "fwd_") + c.Name();
      const double flops = bwd ? 2.5 * fwd_flops : fwd_flops;
      benchmark::RegisterBenchmark(name.c_str(),
                                   [&, c, bwd, name, flops](benchmark::State& state) {
                                     Problem& p = problem_for(c);
                                     if (bwd && p.out.empty())
                                       (void)p.Forward(c.Layer(), **backend);
                                     // Best of the iterations: other load on a shared machine only
                                     // ever slows a run down.
                                     double per_iter = INFINITY;
                                     for (auto _ : state) {
                                       const Clock::time_point t0 = Clock::now();
                                       const absl::Status s = bwd ? p.Backward(c.Layer(), **backend)
                                                                  : p.Forward(c.Layer(), **backend);
                                       per_iter = std::min(per_iter, Seconds(t0));
                                       if (!s.ok()) state.SkipWithError(s.ToString().c_str());
                                     }
                                     results.seconds[name] = per_iter;
                                     results.gflops[name] = flops / per_iter * 1e-9;
                                     state.counters["GFLOP/s"] = results.gflops[name];
                                     state.counters["of_sgemm_peak"] =
                                         results.gflops[name] / sgemm_before;
                                   })
          ->Unit(benchmark::kMillisecond)
          ->Iterations(2)
          ->UseRealTime();
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  const double flash_rss = PeakRssBytes();
  problem.reset();
  const double sgemm = std::max(sgemm_before, MeasureSgemmGflops());
  std::printf("sgemm peak, best of before and after: %.1f GFLOP/s\n", sgemm);

  // Dense baselines on D=128 fp32 causal, extrapolated from one head.
  const int64_t d = 128;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> hq(seq_len * d), hk(seq_len * d), hv(seq_len * d);
  for (auto* t : {&hq, &hk, &hv}) {
    for (float& x : *t) x = dist(rng);
  }
  const int64_t naive_rows = std::min<int64_t>(seq_len, 128);
  const double naive_seconds = dense
                                   ? NaiveDenseSeconds(hq, hk, hv, seq_len, d, naive_rows, scale) *
                                         (static_cast<double>(seq_len) / naive_rows) * 16
                                   : 0.0;
  const double blas_seconds = dense ? BlasDenseSeconds(hq, hk, hv, seq_len, d, scale) * 16 : 0.0;
  const double score_bytes = 16.0 * seq_len * seq_len * sizeof(float);

  const std::string key = "fwd_fp32_d128_causal";
  if (dense) {
    std::printf(
        "\nnaive dense forward (S x S scores, plain loops), D=128 fp32 causal: %.1f s "
        "(extrapolated from %lld rows of one head)\n",
        naive_seconds, static_cast<long long>(naive_rows));
    std::printf("BLAS dense forward (S x S scores, OpenBLAS sgemm): %.2f s (one head x 16)\n",
                blas_seconds);
  }
  // No problem ran (a filter matched none, or only listed them): nothing
  // to compare the RSS with.
  const bool ran = max_tensor_bytes > 0;
  if (ran) {
    std::printf(
        "peak RSS during the flash benchmarks: %.0f MiB, %.2fx the largest problem's "
        "own tensors (inputs, outputs, gradients: %.0f MiB); its S x S fp32 scores "
        "alone would take %.0f MiB\n",
        flash_rss / 1048576.0, flash_rss / max_tensor_bytes, max_tensor_bytes / 1048576.0,
        score_bytes / 1048576.0);
  }
  std::printf("\n");
  for (const auto& [name, gflops] : results.gflops) {
    std::printf("figure: cpu_%s_gflops %.1f\n", name.c_str(), gflops);
    std::printf("figure: cpu_%s_vs_sgemm_peak %.3f\n", name.c_str(), gflops / sgemm);
  }
  std::printf("figure: cpu_sgemm_peak_gflops %.1f\n", sgemm);
  if (dense && results.seconds.count(key)) {
    std::printf("figure: cpu_fwd_fp32_d128_causal_speedup_vs_naive_dense %.1f\n",
                naive_seconds / results.seconds[key]);
    std::printf("figure: cpu_fwd_fp32_d128_causal_speedup_vs_blas_dense %.2f\n",
                blas_seconds / results.seconds[key]);
  }
  if (ran) {
    std::printf("figure: cpu_flash_peak_rss_mib %.0f\n", flash_rss / 1048576.0);
    std::printf("figure: cpu_flash_peak_rss_vs_tensor_footprint %.2f\n",
                flash_rss / max_tensor_bytes);
  }
  std::printf("figure: cpu_dense_scores_mib %.0f\n", score_bytes / 1048576.0);
  benchmark::Shutdown();
  return 0;
}

}  // namespace
}  // namespace ringattn::kernels

int main(int argc, char** argv) { return ringattn::kernels::Main(argc, argv); }
