// Kernel demo: a random Gemma-4-like batch (two packed documents, one image
// block, right padding) through a sliding and a full attention layer,
// forward and backward, computed chunk by chunk the way a ring of `--chunks`
// ranks would and checked against the fp64 dense oracle.

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "kernels/backends.h"
#include "kernels/reference/chunked_attention.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "kernels/reference/synthetic_batch.h"

ABSL_FLAG(int64_t, seq_len, 1024, "Padded sequence length S (a multiple of --chunks).");
ABSL_FLAG(int64_t, batch, 1, "Batch size B.");
ABSL_FLAG(int64_t, heads, 4, "Query heads H.");
ABSL_FLAG(int64_t, kv_heads, 2, "Key/value heads Hkv (divides H).");
ABSL_FLAG(int64_t, chunks, 4, "Contiguous shards, as in a ring of this many ranks.");
ABSL_FLAG(int64_t, window, 512, "Sliding window W of the sliding layer.");
ABSL_FLAG(std::string, dtype, "fp32", "Element type: fp32, bf16 or fp16.");
ABSL_FLAG(int, threads, 0, "Kernel threads; 0 = one per core.");
ABSL_FLAG(std::string, isa, "", "Force an instruction set: generic, avx2, avx512.");
ABSL_FLAG(uint64_t, seed, 42, "Random seed.");
ABSL_FLAG(double, logit_std, 2.0,
          "Standard deviation of the random scaled logits scale*q.k (sets the Q/K "
          "amplitude); larger values make softmax peakier and fp32 error larger.");

namespace ringattn::kernels {
namespace {

struct Layer {
  std::string name;
  int64_t head_dim;
  LayerConfig config;
};

// Fraction of (query, key) pairs the mask allows, for honest FLOP counts.
double AllowedFraction(const reference::DenseProblem& p) {
  int64_t allowed = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t q = 0; q < p.seq_len; ++q) {
      for (int64_t k = 0; k < p.seq_len; ++k)
        allowed += reference::DenseAllowed(p, b, q, k) ? 1 : 0;
    }
  }
  return static_cast<double>(allowed) / static_cast<double>(p.batch * p.seq_len * p.seq_len);
}

bool Report(const char* what, const reference::ErrorStats& e, double tol) {
  const bool ok = e.Within(tol);
  std::printf("  %-4s max|err| %.3e  max|ref| %.3e  rel %.3e  tol %.1e  nan %lld  %s\n", what,
              e.max_abs_err, e.max_ref, e.relative(), tol, static_cast<long long>(e.nans),
              ok ? "ok" : "FAIL");
  return ok;
}

int Run() {
  DType dtype;
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  if (dtype_name == "fp32") {
    dtype = DType::kF32;
  } else if (dtype_name == "bf16") {
    dtype = DType::kBF16;
  } else if (dtype_name == "fp16") {
    dtype = DType::kF16;
  } else {
    std::fprintf(stderr, "error: --dtype must be fp32, bf16 or fp16, got '%s'\n",
                 dtype_name.c_str());
    return 2;
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  absl::StatusOr<std::unique_ptr<ChunkBackend>> backend =
      MakeCpuBackend(threads, absl::GetFlag(FLAGS_isa));
  if (!backend.ok()) {
    std::fprintf(stderr, "error: %s\n", backend.status().ToString().c_str());
    return 2;
  }

  reference::BatchShape shape;
  shape.batch = absl::GetFlag(FLAGS_batch);
  shape.heads = absl::GetFlag(FLAGS_heads);
  shape.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  shape.seq_len = absl::GetFlag(FLAGS_seq_len);
  const int64_t chunks = absl::GetFlag(FLAGS_chunks);
  if (shape.batch < 1 || shape.heads < 1 || shape.kv_heads < 1 || chunks < 1 || shape.seq_len < 1 ||
      shape.seq_len % chunks != 0) {
    std::fprintf(stderr, "error: need positive sizes and --seq_len a multiple of --chunks\n");
    return 2;
  }

  LayerConfig sliding;
  sliding.kind = LayerKind::kSliding;
  sliding.window = absl::GetFlag(FLAGS_window);
  sliding.scale = 1.0f;  // Gemma 4: q/k norm, no 1/sqrt(D).
  LayerConfig full;
  full.kind = LayerKind::kFull;
  full.scale = 1.0f;
  const std::vector<Layer> layers = {{"sliding", 256, sliding}, {"full", 512, full}};

  std::printf(
      "ringattn kernel demo: B=%lld H=%lld Hkv=%lld S=%lld, %lld chunks, %s, "
      "%s, %u threads\n",
      static_cast<long long>(shape.batch), static_cast<long long>(shape.heads),
      static_cast<long long>(shape.kv_heads), static_cast<long long>(shape.seq_len),
      static_cast<long long>(chunks), dtype_name.c_str(), (*backend)->name().c_str(),
      threads > 0 ? static_cast<unsigned>(threads) : std::thread::hardware_concurrency());
  std::printf("batch: two packed documents, one image block, right padding\n");

  bool all_ok = true;
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  for (const Layer& layer : layers) {
    shape.head_dim = layer.head_dim;
    const reference::SyntheticBatch batch = reference::MakeSyntheticBatch(
        shape, {reference::GemmaLikeLayout(shape.seq_len)}, dtype, seed++,
        reference::AmplitudeForLogitStd(absl::GetFlag(FLAGS_logit_std), layer.head_dim,
                                        layer.config.scale));
    absl::StatusOr<reference::ChunkedResult> got =
        reference::RunChunked(batch, layer.config, chunks, **backend);
    if (!got.ok()) {
      std::fprintf(stderr, "error: %s\n", got.status().ToString().c_str());
      return 1;
    }
    const reference::DenseProblem problem = reference::ToDenseProblem(batch, layer.config);
    const reference::DenseOutput want = reference::DenseForward(problem);
    const std::vector<double> dout(batch.dout.begin(), batch.dout.end());
    const reference::DenseGrads grads = reference::DenseBackward(problem, dout);

    const double fraction = AllowedFraction(problem);
    const double fwd_flops =
        4.0 * shape.batch * shape.heads * shape.seq_len * shape.seq_len * shape.head_dim * fraction;
    std::printf("%s layer (D=%lld%s): %.1f%% of pairs attend\n", layer.name.c_str(),
                static_cast<long long>(layer.head_dim),
                layer.config.kind == LayerKind::kSliding
                    ? absl::StrCat(", W=", layer.config.window).c_str()
                    : "",
                100.0 * fraction);
    const double out_tol = reference::OutputTolerance(dtype);
    const double grad_tol = reference::GradientTolerance(dtype);
    all_ok &= Report("O", reference::Compare(got->out, want.out), out_tol);
    all_ok &= Report("LSE", reference::Compare(got->lse, want.lse), 1e-5);
    all_ok &= Report("dQ", reference::Compare(got->dq, grads.dq), grad_tol);
    all_ok &= Report("dK", reference::Compare(got->dk, grads.dk), grad_tol);
    all_ok &= Report("dV", reference::Compare(got->dv, grads.dv), grad_tol);
    std::printf("  forward  %8.2f ms  %7.1f GFLOP/s\n", 1e3 * got->forward_seconds,
                fwd_flops / got->forward_seconds * 1e-9);
    std::printf("  backward %8.2f ms  %7.1f GFLOP/s\n", 1e3 * got->backward_seconds,
                2.5 * fwd_flops / got->backward_seconds * 1e-9);
  }
  std::printf("%s\n", all_ok ? "PASS: every result within tolerance of the fp64 oracle"
                             : "FAIL: some result outside tolerance");
  return all_ok ? 0 : 1;
}

}  // namespace
}  // namespace ringattn::kernels

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs a random Gemma-4-like batch through the CPU ring-attention kernels "
      "(sliding and full layer, forward and backward) and checks it against the "
      "fp64 dense oracle.");
  absl::ParseCommandLine(argc, argv);
  return ringattn::kernels::Run();
}
