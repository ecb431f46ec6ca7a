#include "kernels/cuda/cuda_memory_space.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_footprint.h"
#include "kernels/cuda/device_launch.h"
#include "kernels/cuda/scoped_device.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels::cuda {

absl::StatusOr<bool> IsDeviceMemory(const void* p, int device) {
  cudaPointerAttributes attr{};
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaPointerGetAttributes(&attr, p));
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) return false;
  if (attr.device != device) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer is on CUDA device ", attr.device, ", the backend on device ", device));
  }
  return true;
}

std::string CudaMemorySpace::name() const { return absl::StrCat("cuda:", device_); }

absl::Status CudaMemorySpace::CheckFits(int64_t bytes) {
  RINGATTN_ASSIGN_OR_RETURN(const ScopedDevice on_device, ScopedDevice::Enter(device_));
  size_t free_bytes = 0, total_bytes = 0;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  return CheckDeviceFits(bytes, static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes),
                         name());
}

MemoryTraffic CudaMemorySpace::traffic() const { return {host_to_device_, device_to_host_}; }

absl::Status CudaMemorySpace::Sync() {
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::StatusOr<std::byte*> CudaMemorySpace::AllocateBytes(size_t bytes) {
  RINGATTN_ASSIGN_OR_RETURN(const ScopedDevice on_device, ScopedDevice::Enter(device_));
  void* p = nullptr;
  if (const cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    return absl::ResourceExhaustedError(absl::StrCat(name(), ": cannot allocate ", bytes,
                                                     " bytes (", free_bytes, " free of ",
                                                     total_bytes, "): ", cudaGetErrorString(e)));
  }
  held_ += static_cast<int64_t>(bytes);
  auto* data = static_cast<std::byte*>(p);
  absl::Status zeroed = DoZero(data, bytes);
  if (!zeroed.ok()) {
    FreeBytes(data, bytes);
    return zeroed;
  }
  return data;
}

void CudaMemorySpace::FreeBytes(std::byte* data, size_t bytes) {
  // Every operation waited for its stream, so nothing still uses `data`.
  const absl::StatusOr<ScopedDevice> on_device = ScopedDevice::Enter(device_);
  (void)on_device;
  (void)cudaFree(data);
  held_ -= static_cast<int64_t>(bytes);
}

absl::Status CudaMemorySpace::DoUpload(std::byte* dst, const std::byte* src, size_t bytes) {
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  host_to_device_ += static_cast<int64_t>(bytes);
  return Sync();
}

absl::Status CudaMemorySpace::DoDownload(std::byte* dst, const std::byte* src, size_t bytes) {
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  device_to_host_ += static_cast<int64_t>(bytes);
  return Sync();
}

absl::Status CudaMemorySpace::DoCopy(std::byte* dst, const std::byte* src, size_t bytes) {
  RINGATTN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  return Sync();
}

absl::Status CudaMemorySpace::DoZero(std::byte* dst, size_t bytes) {
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, 0, bytes, stream_));
  return Sync();
}

absl::Status CudaMemorySpace::DoAdd(float* dst, int64_t dst_stride, const float* src,
                                    int64_t src_stride, int64_t rows, int64_t cols) {
  RINGATTN_RETURN_IF_ERROR(LaunchAdd(dst, dst_stride, src, src_stride, rows, cols, stream_));
  return Sync();
}

absl::Status CudaMemorySpace::DoMerge(float* out, float* lse, const float* o_s, const float* lse_s,
                                      int64_t rows, int64_t head_dim) {
  MergeDeviceParams p;
  p.out = out;
  p.lse = lse;
  p.o_s = o_s;
  p.lse_s = lse_s;
  p.rows = rows;
  p.head_dim = head_dim;
  RINGATTN_RETURN_IF_ERROR(LaunchMergePartial(p, stream_));
  return Sync();
}

absl::Status CudaMemorySpace::DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) {
  RINGATTN_RETURN_IF_ERROR(LaunchFromF32(src, n, dtype, dst, stream_));
  return Sync();
}

}  // namespace ringattn::kernels::cuda
