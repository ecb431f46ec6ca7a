#ifndef RINGATTN_KERNELS_CUDA_SCOPED_DEVICE_H_
#define RINGATTN_KERNELS_CUDA_SCOPED_DEVICE_H_

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_check.h"

namespace ringattn::kernels::cuda {

// Makes `device` current for a scope and restores the caller's device, so
// a call on a backend leaves the calling thread as it found it.
class ScopedDevice {
 public:
  static absl::StatusOr<ScopedDevice> Enter(int device) {
    int previous = 0;
    RINGATTN_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
    RINGATTN_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    return ScopedDevice(previous);
  }
  ScopedDevice(ScopedDevice&& other) noexcept : previous_(std::exchange(other.previous_, -1)) {}
  ScopedDevice& operator=(ScopedDevice&&) = delete;
  ~ScopedDevice() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);
  }

 private:
  explicit ScopedDevice(int previous) : previous_(previous) {}
  int previous_;
};

// True when `p` is device (or managed) memory of `device`; false for host
// memory; INVALID_ARGUMENT for another device's memory.
absl::StatusOr<bool> IsDeviceMemory(const void* p, int device);

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_SCOPED_DEVICE_H_
