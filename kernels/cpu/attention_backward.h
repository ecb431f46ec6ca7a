#ifndef RINGATTN_KERNELS_CPU_ATTENTION_BACKWARD_H_
#define RINGATTN_KERNELS_CPU_ATTENTION_BACKWARD_H_

#include "absl/status/status.h"
#include "kernels/chunk_args.h"
#include "kernels/cpu/cpu_context.h"

namespace ringattn::kernels::cpu {

// Flash-attention backward of a query shard against one K/V chunk (SPEC §4):
// P is recomputed from the saved final log-sum-exp, delta = rowsum(dO * O),
// and dQ, dK, dV are accumulated (+=) in fp32; the dK/dV of the H/Hkv query
// heads sharing a kv head are summed. The result does not depend on the
// number of threads.
absl::Status BackwardChunk(const BackwardChunkArgs& args, CpuContext& ctx);

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_ATTENTION_BACKWARD_H_
