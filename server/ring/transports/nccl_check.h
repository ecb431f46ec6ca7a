#ifndef RINGATTN_SERVER_RING_TRANSPORTS_NCCL_CHECK_H_
#define RINGATTN_SERVER_RING_TRANSPORTS_NCCL_CHECK_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

// CUDA runtime and NCCL results as absl::Status naming file:line and the
// call, for the host code of the NCCL transport, its tests and bench/gpu/.
// Names differ from kernels/cuda/cuda_check.h so both can be included.

namespace ringattn::ring::nccl_check {

inline absl::Status Cuda(cudaError_t e, const char* file, int line, const char* expr) {
  if (e == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code =
      e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice
          ? absl::StatusCode::kFailedPrecondition
          : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(file, ":", line, ": ", expr, ": ", cudaGetErrorName(e),
                                         " (", cudaGetErrorString(e), ")"));
}

// ncclInProgress is success here: every communicator of this project is
// non-blocking, so it means "started; poll ncclCommGetAsyncError".
inline absl::Status Nccl(ncclResult_t r, const char* file, int line, const char* expr) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  // A lost peer or network shows as a system or remote error.
  const absl::StatusCode code = r == ncclSystemError || r == ncclRemoteError
                                    ? absl::StatusCode::kUnavailable
                                    : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(file, ":", line, ": ", expr, ": ", ncclGetErrorString(r),
                                         " (", ncclGetLastError(nullptr), ")"));
}

// For destructors and other places with nobody to return an error to.
inline void Report(const absl::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "ringattn: %s\n", s.ToString().c_str());
}

}  // namespace ringattn::ring::nccl_check

// The absl::Status of a CUDA runtime call / an NCCL call.
#define RINGATTN_CUDA_STATUS(expr) \
  ::ringattn::ring::nccl_check::Cuda((expr), __FILE__, __LINE__, #expr)
#define RINGATTN_NCCL_STATUS(expr) \
  ::ringattn::ring::nccl_check::Nccl((expr), __FILE__, __LINE__, #expr)

#endif  // RINGATTN_SERVER_RING_TRANSPORTS_NCCL_CHECK_H_
