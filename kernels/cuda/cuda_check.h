#ifndef RINGATTN_KERNELS_CUDA_CUDA_CHECK_H_
#define RINGATTN_KERNELS_CUDA_CUDA_CHECK_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

// CUDA errors as absl::Status for host code compiled by the C++ compiler.

namespace ringattn::kernels::cuda {

inline absl::Status ToStatus(const CudaStatus& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(s.where, ": ", cudaGetErrorName(s.error), " (",
                                          cudaGetErrorString(s.error), ")"));
}

}  // namespace ringattn::kernels::cuda

// Returns INTERNAL naming file:line, the expression and the CUDA error if
// `expr` (a cudaError_t) is not cudaSuccess.
#define RINGATTN_CUDA_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                          \
    if (const cudaError_t ringattn_cuda_error_ = (expr); ringattn_cuda_error_ != cudaSuccess) { \
      return ::ringattn::kernels::cuda::ToStatus(::ringattn::kernels::cuda::CudaStatus{         \
          ringattn_cuda_error_, __FILE__ ":" RINGATTN_CUDA_STRINGIFY_(__LINE__) ": " #expr});   \
    }                                                                                           \
  } while (false)

#endif  // RINGATTN_KERNELS_CUDA_CUDA_CHECK_H_
