#ifndef RINGATTN_KERNELS_CPU_ATTENTION_FORWARD_H_
#define RINGATTN_KERNELS_CPU_ATTENTION_FORWARD_H_

#include "absl/status/status.h"
#include "kernels/chunk_args.h"
#include "kernels/cpu/cpu_context.h"

namespace ringattn::kernels::cpu {

// Flash-attention forward of a query shard against one K/V chunk with the
// full mask of SPEC §2 (causal, window, vision groups, documents, padding),
// GQA, fp32/bf16/fp16 inputs and fp32 accumulation. Writes the chunk's
// partial output and log-sum-exp; rows that attend nothing in this chunk
// get 0 and -inf. INVALID_ARGUMENT for bad arguments, RESOURCE_EXHAUSTED if
// the workspace cannot be allocated.
absl::Status ForwardChunk(const ForwardChunkArgs& args, CpuContext& ctx);

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_ATTENTION_FORWARD_H_
