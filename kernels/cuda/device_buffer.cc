#include "kernels/cuda/device_buffer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_check.h"

namespace ringattn::kernels::cuda {

DeviceBuffer::~DeviceBuffer() { Release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), capacity_(std::exchange(other.capacity_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    ptr_ = std::exchange(other.ptr_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

void DeviceBuffer::Release() {
  // Errors here can only be sticky errors of an earlier call, which that
  // call already reported; a destructor has no one to tell.
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
  ptr_ = nullptr;
  capacity_ = 0;
}

absl::Status DeviceBuffer::Reserve(size_t bytes) {
  if (bytes <= capacity_) return absl::OkStatus();
  Release();
  void* ptr = nullptr;
  if (const cudaError_t e = cudaMalloc(&ptr, bytes); e != cudaSuccess) {
    (void)cudaGetLastError();  // Clear the error so later calls do not see it.
    if (e == cudaErrorMemoryAllocation) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cudaMalloc of ", bytes, " bytes: out of device memory"));
    }
    return ToStatus(CudaStatus{e, __FILE__ ": cudaMalloc"});
  }
  ptr_ = ptr;
  capacity_ = bytes;
  return absl::OkStatus();
}

absl::StatusOr<CudaStream> CudaStream::Create() {
  cudaStream_t stream = nullptr;
  RINGATTN_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return CudaStream(stream);
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

}  // namespace ringattn::kernels::cuda
