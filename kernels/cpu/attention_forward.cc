#include "kernels/cpu/attention_forward.h"

#include "kernels/cpu/float_buffer.h"
#include "kernels/cpu/impl/isa_dispatch.h"
#include "kernels/cpu/tile_plan.h"
#include "kernels/status_macros.h"
#include "kernels/validate.h"

namespace ringattn::kernels::cpu {

absl::Status ForwardChunk(const ForwardChunkArgs& args, CpuContext& ctx) {
  RINGATTN_ASSIGN_OR_RETURN(const ForwardParams params, MakeForwardParams(args));
  const ChunkProblem& p = params.problem;
  const TilePlanStorage storage(p);
  const TilePlan& plan = storage.plan();
  const int64_t dp = plan.head_dim_padded;
  const int64_t kv_size = p.shape.batch * p.shape.kv_heads * plan.kv_tiles * kBk * dp;

  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer k_t, FloatBuffer::Allocate(kv_size, "forward K^T"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer v, FloatBuffer::Allocate(kv_size, "forward V"));
  RINGATTN_ASSIGN_OR_RETURN(
      FloatBuffer scratch,
      FloatBuffer::Allocate(ctx.pool().num_threads() * ForwardScratchPerWorker(dp),
                            "forward scratch"));
  const ForwardWorkspace ws{k_t.data(), v.data(), scratch.data()};

  KernelsFor(ctx.isa()).forward(params, plan, ws, ctx.pool());
  return absl::OkStatus();
}

}  // namespace ringattn::kernels::cpu
