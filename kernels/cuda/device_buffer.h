#ifndef RINGATTN_KERNELS_CUDA_DEVICE_BUFFER_H_
#define RINGATTN_KERNELS_CUDA_DEVICE_BUFFER_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Owners of device memory and streams: the only places that call
// cudaMalloc / cudaFree and cudaStreamCreate / cudaStreamDestroy.

namespace ringattn::kernels::cuda {

// Device memory that grows on demand and is never shrunk, so a backend
// serving ring steps of one shape allocates once.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // At least `bytes` of device memory on the current device; the old
  // contents are not kept. RESOURCE_EXHAUSTED when the device is full.
  absl::Status Reserve(size_t bytes);

  void* data() const { return ptr_; }
  size_t capacity() const { return capacity_; }

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void Release();

  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

// A non-blocking CUDA stream on the current device.
class CudaStream {
 public:
  static absl::StatusOr<CudaStream> Create();
  ~CudaStream();
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  cudaStream_t get() const { return stream_; }

 private:
  explicit CudaStream(cudaStream_t stream) : stream_(stream) {}

  cudaStream_t stream_ = nullptr;
};

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_DEVICE_BUFFER_H_
