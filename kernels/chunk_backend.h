#ifndef RINGATTN_KERNELS_CHUNK_BACKEND_H_
#define RINGATTN_KERNELS_CHUNK_BACKEND_H_

#include <string>

#include "absl/status/status.h"
#include "kernels/chunk_args.h"

// What the ring computes each step on: the forward or backward of a query
// shard against one K/V chunk, with the arguments of kernels/chunk_args.h
// (host memory; a device backend stages them itself). The CPU backend runs
// the CPU kernels; the CUDA backend runs the CUDA kernels on one GPU. Both
// meet the same contract: forward overwrites out/lse with the chunk's
// partial result, backward accumulates (+=) dq/dk/dv in fp32.

namespace ringattn::kernels {

class ChunkBackend {
 public:
  virtual ~ChunkBackend() = default;

  // For logs and metrics: "cpu/avx512", "cuda:0 (NVIDIA H100 ...)".
  virtual std::string name() const = 0;

  virtual absl::Status Forward(const ForwardChunkArgs& args) = 0;
  virtual absl::Status Backward(const BackwardChunkArgs& args) = 0;
};

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_CHUNK_BACKEND_H_
