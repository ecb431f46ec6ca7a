#ifndef RINGATTN_KERNELS_CUDA_CUDA_STATUS_H_
#define RINGATTN_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

// The result of a sequence of CUDA calls in code nvcc compiles (which keeps
// Abseil out of its translation units): the first error and the call that
// returned it, as "file:line: expression". kernels/cuda/cuda_check.h turns it
// into an absl::Status at the boundary.

namespace ringattn::kernels::cuda {

struct CudaStatus {
  cudaError_t error = cudaSuccess;
  const char* where = "";  // "file:line: expression" of the failing call

  bool ok() const { return error == cudaSuccess; }
};

}  // namespace ringattn::kernels::cuda

#define RINGATTN_CUDA_STRINGIFY_INNER_(x) #x
#define RINGATTN_CUDA_STRINGIFY_(x) RINGATTN_CUDA_STRINGIFY_INNER_(x)

// Returns a CudaStatus naming file:line and the expression if `expr` (a
// cudaError_t) is not cudaSuccess.
#define RINGATTN_CUDA_TRY(expr)                                                                 \
  do {                                                                                          \
    if (const cudaError_t ringattn_cuda_error_ = (expr); ringattn_cuda_error_ != cudaSuccess) { \
      return ::ringattn::kernels::cuda::CudaStatus{                                             \
          ringattn_cuda_error_, __FILE__ ":" RINGATTN_CUDA_STRINGIFY_(__LINE__) ": " #expr};    \
    }                                                                                           \
  } while (false)

// Propagates a failed CudaStatus from the enclosing function.
#define RINGATTN_CUDA_TRY_STATUS(expr)                                              \
  do {                                                                              \
    if (const ::ringattn::kernels::cuda::CudaStatus ringattn_cuda_status_ = (expr); \
        !ringattn_cuda_status_.ok()) {                                              \
      return ringattn_cuda_status_;                                                 \
    }                                                                               \
  } while (false)

#endif  // RINGATTN_KERNELS_CUDA_CUDA_STATUS_H_
