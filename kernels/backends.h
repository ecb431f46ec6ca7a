#ifndef RINGATTN_KERNELS_BACKENDS_H_
#define RINGATTN_KERNELS_BACKENDS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/chunk_backend.h"

// The CPU backend, made by name: callers (the worker, the ring's tests and
// benches, the oracle's chunked runner) hold a ChunkBackend and never
// include kernels/cpu. Defined by the ringattn_kernels_cpu target. The CUDA
// backend has its own factory (kernels/cuda/cuda_backend.h), since it exists
// only in builds with CUDA.

namespace ringattn::kernels {

// The CPU chunk kernels with a thread pool of their own: `num_threads` 0 is
// one per core; `isa` "" is the best this CPU supports, else one of
// SupportedCpuIsas(). INVALID_ARGUMENT for an unknown instruction set or a
// negative thread count, FAILED_PRECONDITION for one this CPU cannot run.
absl::StatusOr<std::unique_ptr<ChunkBackend>> MakeCpuBackend(int num_threads = 0,
                                                             const std::string& isa = "");

// The instruction sets of the CPU kernels this CPU can run, slowest first
// ("generic", then "avx2", "avx512" where supported).
std::vector<std::string> SupportedCpuIsas();

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_BACKENDS_H_
