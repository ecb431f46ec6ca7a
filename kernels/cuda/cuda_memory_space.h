#ifndef RINGATTN_KERNELS_CUDA_CUDA_MEMORY_SPACE_H_
#define RINGATTN_KERNELS_CUDA_CUDA_MEMORY_SPACE_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/memory_space.h"

// One GPU's memory as the CUDA backend's space (kernels/memory_space.h):
// cudaMalloc'd buffers, and every operation on the backend's stream (the
// merge, add and conversion kernels of impl/merge_kernels.cuh), waited for
// before it returns, so it is ordered after the chunk kernels before it
// and before anything the caller does next (an NCCL send on another
// stream included).

namespace ringattn::kernels::cuda {

class CudaMemorySpace final : public MemorySpace {
 public:
  // `stream` must outlive this.
  CudaMemorySpace(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

  MemoryKind kind() const override { return MemoryKind::kDevice; }
  std::string name() const override;
  // Against cudaMemGetInfo, with CheckDeviceFits' message.
  absl::Status CheckFits(int64_t bytes) override;
  MemoryTraffic traffic() const override;

  int device() const { return device_; }
  int64_t bytes_held() const { return held_; }
  // Staging the backend does for host-memory arguments counts here too.
  void CountUpload(int64_t bytes) { host_to_device_ += bytes; }
  void CountDownload(int64_t bytes) { device_to_host_ += bytes; }

 protected:
  absl::StatusOr<std::byte*> AllocateBytes(size_t bytes) override;
  void FreeBytes(std::byte* data, size_t bytes) override;
  absl::Status DoUpload(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoDownload(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoCopy(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoZero(std::byte* dst, size_t bytes) override;
  absl::Status DoAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                     int64_t rows, int64_t cols) override;
  absl::Status DoMerge(float* out, float* lse, const float* o_s, const float* lse_s, int64_t rows,
                       int64_t head_dim) override;
  absl::Status DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) override;

 private:
  absl::Status Sync();

  const int device_;
  cudaStream_t stream_;  // The backend's; outlives this.
  // Read by metrics threads while a call runs.
  std::atomic<int64_t> held_{0};
  std::atomic<int64_t> host_to_device_{0}, device_to_host_{0};
};

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_CUDA_MEMORY_SPACE_H_
