// Communication/compute overlap of the NCCL transport on one GPU: a K/V-sized
// self send/receive through ConnectNccl's communicator (its own stream)
// alone, a cuBLAS GEMM stream alone, and both at once. With two GPUs or
// more, also a 2-rank ring exchange (ranks as threads, one GPU each).
// Ends with `figure:` lines; without a GPU prints "no CUDA device: skipped".
//
//   bench/gpu/nccl_ring.sh            # builds it if needed, then runs it
//
// overlap_fraction = (t_comm + t_compute - t_both) / min(t_comm, t_compute):
// 1 when the shorter one hides entirely under the longer, 0 when they
// serialize.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "server/ring/store.h"
#include "server/ring/transports/nccl_check.h"
#include "server/ring/transports/nccl_transport.h"

ABSL_FLAG(int64_t, kv_mib, 32,
          "MiB exchanged per step: one K/V chunk (32 MiB = B 1, Hkv 8, L 8192, D 128, bf16).");
ABSL_FLAG(int, gemm_n, 4096, "Size of the square fp32 GEMMs the compute stream runs.");
ABSL_FLAG(int, repeat, 20, "Timed repetitions of each measurement (median kept).");

namespace ringattn::bench {
namespace {

using Clock = std::chrono::steady_clock;

#define RINGATTN_CUBLAS_STATUS(expr) CublasStatus((expr), __FILE__, __LINE__, #expr)

absl::Status CublasStatus(cublasStatus_t s, const char* file, int line, const char* expr) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(file, ":", line, ": ", expr, ": ", cublasGetStatusString(s)));
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct DeviceBuffer {
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data != nullptr) ring::nccl_check::Report(RINGATTN_CUDA_STATUS(cudaFree(data)));
  }
  absl::Status Allocate(size_t n) {
    size = n;
    return RINGATTN_CUDA_STATUS(cudaMalloc(&data, n));
  }
  std::span<std::byte> span() const { return {static_cast<std::byte*>(data), size}; }
  void* data = nullptr;
  size_t size = 0;
};

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "ringattn_nccl_XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One exchange: receive into `in` from `from`, send `out` to `to`, as one
// group, and wait.
absl::Status Exchange(ring::Transport& t, int from, int to, uint64_t tag,
                      std::span<const std::byte> out, std::span<std::byte> in) {
  RINGATTN_ASSIGN_OR_RETURN(auto r, t.Recv(from, tag, in));
  RINGATTN_ASSIGN_OR_RETURN(auto s, t.Send(to, tag, out));
  RINGATTN_RETURN_IF_ERROR(t.Flush());
  RINGATTN_RETURN_IF_ERROR(r->Wait(absl::Seconds(60)));
  return s->Wait(absl::Seconds(60));
}

// `count` GEMMs C = A B of n x n fp32 on `stream`.
absl::Status Gemms(cublasHandle_t h, const DeviceBuffer& a, const DeviceBuffer& b,
                   const DeviceBuffer& c, int n, int count) {
  const float one = 1.0f, zero = 0.0f;
  for (int i = 0; i < count; ++i) {
    RINGATTN_RETURN_IF_ERROR(RINGATTN_CUBLAS_STATUS(cublasSgemm(
        h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, static_cast<const float*>(a.data), n,
        static_cast<const float*>(b.data), n, &zero, static_cast<float*>(c.data), n)));
  }
  return absl::OkStatus();
}

absl::Status OneGpu(size_t bytes, int n, int repeat) {
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaSetDevice(0)));
  cudaDeviceProp prop{};
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaGetDeviceProperties(&prop, 0)));
  TempDir dir;
  ring::FileStore store(dir.path());
  ring::NcclOptions o;
  o.generation = 1;
  RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<ring::Transport> t, ring::ConnectNccl(store, o));

  DeviceBuffer out, in, a, b, c;
  RINGATTN_RETURN_IF_ERROR(out.Allocate(bytes));
  RINGATTN_RETURN_IF_ERROR(in.Allocate(bytes));
  const size_t mat = static_cast<size_t>(n) * n * sizeof(float);
  for (DeviceBuffer* m : {&a, &b, &c}) RINGATTN_RETURN_IF_ERROR(m->Allocate(mat));
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMemset(out.data, 1, bytes)));
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMemset(a.data, 0, mat)));
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaMemset(b.data, 0, mat)));

  cudaStream_t compute = nullptr;
  RINGATTN_RETURN_IF_ERROR(
      RINGATTN_CUDA_STATUS(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking)));
  cublasHandle_t h = nullptr;
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUBLAS_STATUS(cublasCreate(&h)));
  RINGATTN_RETURN_IF_ERROR(RINGATTN_CUBLAS_STATUS(cublasSetStream(h, compute)));
  auto cleanup = [&] {
    ring::nccl_check::Report(RINGATTN_CUBLAS_STATUS(cublasDestroy(h)));
    ring::nccl_check::Report(RINGATTN_CUDA_STATUS(cudaStreamDestroy(compute)));
  };
  const auto run = [&]() -> absl::Status {
    uint64_t tag = 0;
    const auto comm_once = [&] { return Exchange(*t, 0, 0, ++tag, out.span(), in.span()); };
    const auto sync = [&] { return RINGATTN_CUDA_STATUS(cudaStreamSynchronize(compute)); };
    // Warm up both (connections, cuBLAS heuristics), then size the GEMM
    // batch so compute alone takes about as long as the exchange alone.
    for (int i = 0; i < 3; ++i) RINGATTN_RETURN_IF_ERROR(comm_once());
    RINGATTN_RETURN_IF_ERROR(Gemms(h, a, b, c, n, 2));
    RINGATTN_RETURN_IF_ERROR(sync());
    std::vector<double> comm, one_gemm;
    for (int i = 0; i < repeat; ++i) {
      Clock::time_point t0 = Clock::now();
      RINGATTN_RETURN_IF_ERROR(comm_once());
      comm.push_back(Since(t0));
      t0 = Clock::now();
      RINGATTN_RETURN_IF_ERROR(Gemms(h, a, b, c, n, 1));
      RINGATTN_RETURN_IF_ERROR(sync());
      one_gemm.push_back(Since(t0));
    }
    const double t_comm = Median(comm);
    const int gemms = std::max(1, static_cast<int>(std::lround(t_comm / Median(one_gemm))));
    std::vector<double> compute_alone, both;
    for (int i = 0; i < repeat; ++i) {
      Clock::time_point t0 = Clock::now();
      RINGATTN_RETURN_IF_ERROR(Gemms(h, a, b, c, n, gemms));
      RINGATTN_RETURN_IF_ERROR(sync());
      compute_alone.push_back(Since(t0));
      // Both: the exchange is issued (Flush) on the communication stream,
      // the GEMMs go on the compute stream, then both are waited for.
      t0 = Clock::now();
      RINGATTN_ASSIGN_OR_RETURN(auto r, t->Recv(0, ++tag, in.span()));
      RINGATTN_ASSIGN_OR_RETURN(auto s, t->Send(0, tag, out.span()));
      RINGATTN_RETURN_IF_ERROR(t->Flush());
      RINGATTN_RETURN_IF_ERROR(Gemms(h, a, b, c, n, gemms));
      RINGATTN_RETURN_IF_ERROR(r->Wait(absl::Seconds(60)));
      RINGATTN_RETURN_IF_ERROR(s->Wait(absl::Seconds(60)));
      RINGATTN_RETURN_IF_ERROR(sync());
      both.push_back(Since(t0));
    }
    const double t_compute = Median(compute_alone);
    const double t_both = Median(both);
    const double overlap = (t_comm + t_compute - t_both) / std::min(t_comm, t_compute);
    std::printf("GPU 0: %s\n", prop.name);
    std::printf("self exchange of %.1f MiB: %.3f ms; %d x SGEMM n=%d: %.3f ms; both: %.3f ms\n",
                static_cast<double>(bytes) / 1048576.0, t_comm * 1e3, gemms, n, t_compute * 1e3,
                t_both * 1e3);
    std::printf("figure: nccl_self_exchange_gbps %.2f\n",
                static_cast<double>(bytes) / t_comm / 1e9);
    std::printf("figure: nccl_overlap_fraction %.2f\n", overlap);
    return absl::OkStatus();
  };
  const absl::Status s = run();
  cleanup();
  return s;
}

// Two ranks as threads on GPUs 0 and 1: each sends its chunk to the other.
absl::Status TwoGpuRing(size_t bytes, int repeat) {
  TempDir dir;
  ring::FileStore store(dir.path());
  std::vector<absl::Status> status(2);
  std::vector<double> seconds(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      status[r] = [&]() -> absl::Status {
        RINGATTN_RETURN_IF_ERROR(RINGATTN_CUDA_STATUS(cudaSetDevice(r)));
        ring::NcclOptions o;
        o.rank = r;
        o.size = 2;
        o.device = r;
        o.generation = 2;
        RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<ring::Transport> t, ring::ConnectNccl(store, o));
        DeviceBuffer out, in;
        RINGATTN_RETURN_IF_ERROR(out.Allocate(bytes));
        RINGATTN_RETURN_IF_ERROR(in.Allocate(bytes));
        const int peer = 1 - r;
        for (int i = 0; i < 3; ++i) {
          RINGATTN_RETURN_IF_ERROR(Exchange(*t, peer, peer, i, out.span(), in.span()));
        }
        std::vector<double> times;
        for (int i = 0; i < repeat; ++i) {
          const Clock::time_point t0 = Clock::now();
          RINGATTN_RETURN_IF_ERROR(Exchange(*t, peer, peer, 100 + i, out.span(), in.span()));
          times.push_back(Since(t0));
        }
        seconds[r] = Median(times);
        return absl::OkStatus();
      }();
    });
  }
  for (auto& th : threads) th.join();
  for (const absl::Status& s : status) RINGATTN_RETURN_IF_ERROR(s);
  const double t = std::max(seconds[0], seconds[1]);
  std::printf("2-rank ring exchange of %.1f MiB each way: %.3f ms\n",
              static_cast<double>(bytes) / 1048576.0, t * 1e3);
  std::printf("figure: nccl_ring2_exchange_gbps %.2f\n", static_cast<double>(bytes) / t / 1e9);
  return absl::OkStatus();
}

int Main() {
  const int devices = ring::NcclDeviceCount();
  if (devices < 1) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_kv_mib))) << 20;
  const int repeat = std::max(3, absl::GetFlag(FLAGS_repeat));
  if (absl::Status s = OneGpu(bytes, std::max(64, absl::GetFlag(FLAGS_gemm_n)), repeat); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    return 1;
  }
  if (devices >= 2) {
    if (absl::Status s = TwoGpuRing(bytes, repeat); !s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace ringattn::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "NCCL transport: self-exchange bandwidth and communication/compute overlap on one GPU; a "
      "2-rank ring with two GPUs.");
  absl::ParseCommandLine(argc, argv);
  return ringattn::bench::Main();
}
