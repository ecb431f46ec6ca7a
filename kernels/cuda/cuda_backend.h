#ifndef RINGATTN_KERNELS_CUDA_CUDA_BACKEND_H_
#define RINGATTN_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/chunk_args.h"
#include "kernels/chunk_backend.h"

// The CUDA chunk kernels behind the backend interface, on one GPU. Takes the
// arguments of kernels/chunk_args.h, validates them exactly as the CPU
// kernels do, and runs the kernels on its own stream: forward overwrites
// out/lse, backward adds to dq/dk/dv. Arguments in its space (this GPU's
// memory, what the ring passes) are read and written in place; arguments in
// host memory are staged through device buffers it keeps (and grows) across
// calls, and the copies are counted in memory(). No CUDA types here, so any
// C++ code can include this header.
//
// One backend serves one caller at a time (like the ring's per-rank
// backend); calls are synchronous.

namespace ringattn::kernels::cuda {

// Number of visible CUDA devices; 0 when there is no GPU or no driver (any
// CUDA error counts as "no GPU").
int CudaDeviceCount();

class CudaBackend final : public ringattn::kernels::ChunkBackend {
 public:
  // FAILED_PRECONDITION naming the reason when `device` is not a usable GPU.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override;  // "cuda:0 (NVIDIA H100 80GB HBM3)"
  MemorySpace& space() override;      // This GPU's memory, on the backend's stream.
  absl::Status Forward(const ForwardChunkArgs& args) override;
  absl::Status Backward(const BackwardChunkArgs& args) override;
  // Allocates the kernels' workspace for the shape up front, after checking
  // the device's free memory (cudaMemGetInfo) against what is missing; the
  // ring checks its own buffers against its space before it allocates them.
  absl::Status Reserve(const AttentionShape& shape, bool backward) override;
  BackendMemory memory() const override;
  int device() const;

 private:
  struct Impl;
  explicit CudaBackend(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace ringattn::kernels::cuda

#endif  // RINGATTN_KERNELS_CUDA_CUDA_BACKEND_H_
