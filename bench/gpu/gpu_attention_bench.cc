// Forward and backward TFLOP/s of the CUDA chunk kernels on one GPU, against
// the GPU's bf16 dense peak measured in the same run with cuBLAS
// (cublasGemmEx, bf16 inputs, fp32 accumulation and output, large square).
//
// Cases: D = 128 causal at S = 8192 and 16384 (the usual flash-attention
// benchmark shape), and a Gemma-4-like mask (packed documents, an image
// block, right padding) on a sliding layer (W = 512, D = 256) and a full
// layer (D = 512). FLOPs count attended (query, key) pairs only: forward
// 4 * D per pair and head (Q K^T and P V), backward 2.5x forward, the
// convention of the flash-attention benchmarks, so skipped tiles are not
// counted as work done.
//
// Tensors stay on the device: this times the kernels (device-pointer entry
// points of kernels/cuda/device_launch.h), not host staging. Prints
// "figure: <name> <value>" lines; without a GPU it prints
// "no CUDA device: skipped" and exits 0.
//
//   bin/ringattn_gpu_attention_bench [--reps=10] [--only=d128]

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/convert.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_launch.h"
#include "kernels/cuda/launch_plan.h"
#include "kernels/mask.h"
#include "kernels/reference/synthetic_batch.h"
#include "kernels/status_macros.h"

ABSL_FLAG(int, reps, 10, "Timed repetitions per measurement (after 2 warm-up runs)");
ABSL_FLAG(std::string, only, "", "Run only cases whose name contains this");

namespace ringattn::kernels::cuda {
namespace {

struct BenchCase {
  std::string name;  // Figure prefix, e.g. bf16_d128_causal_s8192
  int64_t batch, heads, kv_heads, seq_len, head_dim;
  LayerConfig layer;
  bool gemma_layout;  // Packed docs + image + padding; else one document.
};

std::vector<BenchCase> Cases() {
  LayerConfig causal;
  causal.kind = LayerKind::kFull;
  causal.scale = 1.0f / std::sqrt(128.0f);
  LayerConfig sliding;
  sliding.kind = LayerKind::kSliding;
  sliding.window = 512;
  sliding.scale = 1.0f;
  LayerConfig full;
  full.kind = LayerKind::kFull;
  full.scale = 1.0f;
  return {
      {"bf16_d128_causal_s8192", 1, 16, 16, 8192, 128, causal, false},
      {"bf16_d128_causal_s16384", 1, 16, 16, 16384, 128, causal, false},
      {"bf16_d256_gemma4_sliding_w512_s8192", 1, 16, 16, 8192, 256, sliding, true},
      {"bf16_d512_gemma4_full_s8192", 1, 16, 16, 8192, 512, full, true},
  };
}

// Times `fn` (which enqueues work on `stream`) with CUDA events: 2 warm-up
// runs, then the mean of `reps`.
template <typename Fn>
absl::StatusOr<double> TimeSeconds(cudaStream_t stream, int reps, Fn&& fn) {
  for (int i = 0; i < 2; ++i) RINGATTN_RETURN_IF_ERROR(fn());
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, stream));
  for (int i = 0; i < reps; ++i) RINGATTN_RETURN_IF_ERROR(fn());
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, stream));
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
  float ms = 0.0f;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start, stop));
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return ms / 1e3 / reps;
}

absl::Status CublasCheck(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", static_cast<int>(s)));
}

// bf16 dense peak: C[n, n] (fp32) = A[n, n] B[n, n] (bf16), fp32 compute.
absl::StatusOr<double> MeasureBf16PeakTflops(cudaStream_t stream, int reps) {
  constexpr int kN = 8192;
  DeviceBuffer a, b, c;
  RINGATTN_RETURN_IF_ERROR(a.Reserve(size_t{kN} * kN * 2));
  RINGATTN_RETURN_IF_ERROR(b.Reserve(size_t{kN} * kN * 2));
  RINGATTN_RETURN_IF_ERROR(c.Reserve(size_t{kN} * kN * 4));
  // Values do not change the speed of a GEMM much; zeros would let the
  // hardware idle, so fill with small random bf16 values.
  std::vector<uint16_t> host(size_t{kN} * kN);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (uint16_t& x : host) x = F32ToBf16(uni(rng));
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(a.data(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(b.data(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  cublasHandle_t handle = nullptr;
  RINGATTN_RETURN_IF_ERROR(CublasCheck(cublasCreate(&handle), "cublasCreate"));
  RINGATTN_RETURN_IF_ERROR(CublasCheck(cublasSetStream(handle, stream), "cublasSetStream"));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  absl::StatusOr<double> seconds = TimeSeconds(stream, reps, [&]() {
    return CublasCheck(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, kN, kN, kN, &alpha, a.data(),
                                    CUDA_R_16BF, kN, b.data(), CUDA_R_16BF, kN, &beta, c.data(),
                                    CUDA_R_32F, kN, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx");
  });
  (void)cublasDestroy(handle);
  if (!seconds.ok()) return seconds.status();
  return 2.0 * kN * kN * kN / *seconds / 1e12;
}

// Attended (query, key) pairs of one batch row under `layer`.
double AttendedPairs(const reference::SyntheticBatch& meta, const LayerConfig& layer) {
  const MaskRule rule = MaskRuleFor(layer);
  const int64_t s = meta.shape.seq_len;
  double pairs = 0.0;
  for (int64_t b = 0; b < meta.shape.batch; ++b) {
    auto token = [&](int64_t i) {
      const int64_t t = b * s + i;
      return TokenInfo{i, meta.doc[t], meta.vision[t], meta.padding[t] != 0};
    };
    for (int64_t q = 0; q < s; ++q) {
      const TokenInfo tq = token(q);
      if (tq.doc <= 0 || tq.padding) continue;
      for (int64_t k = 0; k < s; ++k) pairs += Allowed(rule, tq, token(k)) ? 1.0 : 0.0;
    }
  }
  return pairs;
}

absl::Status Upload(DeviceBuffer& dst, const void* src, size_t bytes) {
  RINGATTN_RETURN_IF_ERROR(dst.Reserve(bytes));
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst.data(), src, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status RandomBf16(DeviceBuffer& dst, int64_t n, float amplitude, uint32_t seed) {
  std::vector<uint16_t> host(n);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-amplitude, amplitude);
  for (uint16_t& x : host) x = F32ToBf16(uni(rng));
  return Upload(dst, host.data(), host.size() * 2);
}

absl::Status RunCase(const BenchCase& c, const DeviceCaps& caps, double peak, cudaStream_t stream,
                     int reps) {
  const int64_t B = c.batch, H = c.heads, Hkv = c.kv_heads, S = c.seq_len, D = c.head_dim;
  // Metadata only: one head of dim 1 is enough to lay out the tokens.
  reference::RowLayout layout;
  if (c.gemma_layout) {
    layout = reference::GemmaLikeLayout(S);
  } else {
    layout.doc_lengths = {S};
  }
  const reference::SyntheticBatch meta =
      reference::MakeSyntheticBatch({B, 1, 1, S, 1}, {layout}, DType::kBF16, 1);
  const double pairs = AttendedPairs(meta, c.layer);
  const double fwd_flops = 4.0 * D * pairs * H;
  const double bwd_flops = 2.5 * fwd_flops;

  const AttentionShape shape{DType::kBF16, B, H, Hkv, S, S, D};
  RINGATTN_ASSIGN_OR_RETURN(const LaunchPlan plan, MakeLaunchPlan(shape, caps));
  DeviceBuffer q, k, v, dout, out_bf16, out, lse, dq, dk, dv, doc, vision, padding, workspace;
  const float amp = reference::AmplitudeForLogitStd(1.0, D, c.layer.scale);
  RINGATTN_RETURN_IF_ERROR(RandomBf16(q, B * H * S * D, amp, 1));
  RINGATTN_RETURN_IF_ERROR(RandomBf16(k, B * Hkv * S * D, amp, 2));
  RINGATTN_RETURN_IF_ERROR(RandomBf16(v, B * Hkv * S * D, 1.0f, 3));
  RINGATTN_RETURN_IF_ERROR(RandomBf16(dout, B * H * S * D, 1.0f, 4));
  RINGATTN_RETURN_IF_ERROR(RandomBf16(out_bf16, B * H * S * D, 0.1f, 5));
  RINGATTN_RETURN_IF_ERROR(Upload(doc, meta.doc.data(), meta.doc.size() * 4));
  RINGATTN_RETURN_IF_ERROR(Upload(vision, meta.vision.data(), meta.vision.size() * 4));
  RINGATTN_RETURN_IF_ERROR(Upload(padding, meta.padding.data(), meta.padding.size()));
  RINGATTN_RETURN_IF_ERROR(out.Reserve(B * H * S * D * 4));
  RINGATTN_RETURN_IF_ERROR(lse.Reserve(B * H * S * 4));
  RINGATTN_RETURN_IF_ERROR(dq.Reserve(B * H * S * D * 4));
  RINGATTN_RETURN_IF_ERROR(dk.Reserve(B * Hkv * S * D * 4));
  RINGATTN_RETURN_IF_ERROR(dv.Reserve(B * Hkv * S * D * 4));
  RINGATTN_RETURN_IF_ERROR(
      workspace.Reserve(std::max(plan.forward_workspace_bytes, plan.backward_workspace_bytes)));
  const DeviceMeta dmeta{doc.as<const int32_t>(), vision.as<const int32_t>(),
                         padding.as<const uint8_t>(), 0};

  ForwardDeviceParams f;
  f.shape = shape;
  f.q = q.data();
  f.k = k.data();
  f.v = v.data();
  f.q_meta = f.kv_meta = dmeta;
  f.mask = MaskRuleFor(c.layer);
  f.scale = c.layer.scale;
  f.out = out.as<float>();
  f.lse = lse.as<float>();
  f.workspace = workspace.data();
  f.workspace_bytes = static_cast<int64_t>(workspace.capacity());
  RINGATTN_ASSIGN_OR_RETURN(const double fwd_s, TimeSeconds(stream, reps, [&] {
                              return LaunchForward(f, plan, stream);
                            }));

  BackwardDeviceParams bw;
  bw.shape = shape;
  bw.q = q.data();
  bw.k = k.data();
  bw.v = v.data();
  bw.out = out_bf16.data();
  bw.dout = dout.data();
  bw.lse = lse.as<const float>();  // The forward's, so P stays a distribution.
  bw.q_meta = bw.kv_meta = dmeta;
  bw.mask = f.mask;
  bw.scale = f.scale;
  bw.dq = dq.as<float>();
  bw.dk = dk.as<float>();
  bw.dv = dv.as<float>();
  bw.workspace = workspace.data();
  bw.workspace_bytes = f.workspace_bytes;
  RINGATTN_ASSIGN_OR_RETURN(const double bwd_s, TimeSeconds(stream, reps, [&] {
                              return LaunchBackward(bw, plan, stream);
                            }));

  const double fwd_tflops = fwd_flops / fwd_s / 1e12;
  const double bwd_tflops = bwd_flops / bwd_s / 1e12;
  std::printf(
      "case %s: B=%ld H=%ld Hkv=%ld S=%ld D=%ld attended=%.4f of S^2  fwd %.3f ms  bwd %.3f ms\n",
      c.name.c_str(), B, H, Hkv, S, D, pairs / (double(B) * S * S), fwd_s * 1e3, bwd_s * 1e3);
  std::printf("figure: cuda_fwd_%s_tflops %.2f\n", c.name.c_str(), fwd_tflops);
  std::printf("figure: cuda_bwd_%s_tflops %.2f\n", c.name.c_str(), bwd_tflops);
  std::printf("figure: cuda_fwd_%s_vs_bf16_peak %.3f\n", c.name.c_str(), fwd_tflops / peak);
  std::printf("figure: cuda_bwd_%s_vs_bf16_peak %.3f\n", c.name.c_str(), bwd_tflops / peak);
  std::fflush(stdout);
  return absl::OkStatus();
}

int Main() {
  if (CudaDeviceCount() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  const int reps = absl::GetFlag(FLAGS_reps);
  const std::string only = absl::GetFlag(FLAGS_only);
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create(0);
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  std::printf("device: %s\n", (*backend)->name().c_str());
  absl::StatusOr<DeviceCaps> caps = CurrentDeviceCaps();
  absl::StatusOr<CudaStream> stream = CudaStream::Create();
  if (!caps.ok() || !stream.ok()) {
    std::fprintf(stderr, "device setup failed\n");
    return 1;
  }
  absl::StatusOr<double> peak = MeasureBf16PeakTflops(stream->get(), reps);
  if (!peak.ok()) {
    std::fprintf(stderr, "cuBLAS peak: %s\n", std::string(peak.status().message()).c_str());
    return 1;
  }
  std::printf("figure: cublas_bf16_dense_peak_tflops %.2f\n", *peak);
  int failures = 0;
  for (const BenchCase& c : Cases()) {
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    if (absl::Status s = RunCase(c, *caps, *peak, stream->get(), reps); !s.ok()) {
      std::fprintf(stderr, "case %s: %s\n", c.name.c_str(), std::string(s.message()).c_str());
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ringattn::kernels::cuda

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return ringattn::kernels::cuda::Main();
}
