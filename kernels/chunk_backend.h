#ifndef RINGATTN_KERNELS_CHUNK_BACKEND_H_
#define RINGATTN_KERNELS_CHUNK_BACKEND_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/attention_shape.h"
#include "kernels/chunk_args.h"
#include "kernels/memory_space.h"

// What the ring computes each step on: the forward or backward of a query
// shard against one K/V chunk, with the arguments of kernels/chunk_args.h.
// The CPU backend runs the CPU kernels; the CUDA backend runs the CUDA
// kernels on one GPU. Both meet the same contract: forward overwrites
// out/lse with the chunk's partial result, backward accumulates (+=)
// dq/dk/dv in fp32.
//
// Where the arguments live: memory of the backend's space() (device memory
// for a GPU backend, which then reads and writes it in place), or host
// memory, which a device backend stages to and from the device itself,
// counted in memory().host_to_device_bytes / device_to_host_bytes. The ring
// passes space memory only.

namespace ringattn::kernels {

// What a backend holds and moves on its device; all zero for a host backend.
struct BackendMemory {
  int64_t device_bytes_held = 0;  // Allocated on the device now
  int64_t device_bytes_free = 0;  // The device's free memory at the last Reserve
  int64_t device_bytes_total = 0;
  int64_t host_to_device_bytes = 0;  // Copied since the backend started
  int64_t device_to_host_bytes = 0;
};

class ChunkBackend {
 public:
  virtual ~ChunkBackend() = default;

  // For logs and metrics: "cpu/avx512", "cuda:0 (NVIDIA H100 ...)".
  virtual std::string name() const = 0;

  // Where this backend computes: its tensors' memory and the element-wise
  // operations on it. Lives as long as the backend.
  virtual MemorySpace& space() = 0;

  virtual absl::Status Forward(const ForwardChunkArgs& args) = 0;
  virtual absl::Status Backward(const BackwardChunkArgs& args) = 0;

  // Makes room for steps of `shape` (and for their backward, when
  // `backward`) before a ring call starts, so no step runs out of memory
  // halfway round the ring: RESOURCE_EXHAUSTED naming the bytes needed and
  // free when the device cannot hold them, with nothing allocated. A host
  // backend has nothing to reserve.
  virtual absl::Status Reserve(const AttentionShape& shape, bool backward) {
    (void)shape;
    (void)backward;
    return absl::OkStatus();
  }

  virtual BackendMemory memory() const { return {}; }
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_CHUNK_BACKEND_H_
