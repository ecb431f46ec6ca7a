#include "kernels/cpu/attention_backward.h"

#include "kernels/cpu/float_buffer.h"
#include "kernels/cpu/impl/isa_dispatch.h"
#include "kernels/cpu/tile_plan.h"
#include "kernels/status_macros.h"
#include "kernels/validate.h"

namespace ringattn::kernels::cpu {

absl::Status BackwardChunk(const BackwardChunkArgs& args, CpuContext& ctx) {
  RINGATTN_ASSIGN_OR_RETURN(const BackwardParams params, MakeBackwardParams(args));
  const ChunkProblem& p = params.problem;
  const TilePlanStorage storage(p);
  const TilePlan& plan = storage.plan();
  const int64_t dp = plan.head_dim_padded;
  const int64_t q_rows = p.shape.batch * p.shape.heads * plan.q_tiles * kBq;
  const int64_t kv_size = p.shape.batch * p.shape.kv_heads * plan.kv_tiles * kBk * dp;

  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer q, FloatBuffer::Allocate(q_rows * dp, "backward Q"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer dout, FloatBuffer::Allocate(q_rows * dp, "backward dO"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer lse, FloatBuffer::Allocate(q_rows, "backward lse"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer delta, FloatBuffer::Allocate(q_rows, "backward delta"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer k, FloatBuffer::Allocate(kv_size, "backward K"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer k_t, FloatBuffer::Allocate(kv_size, "backward K^T"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer v_t, FloatBuffer::Allocate(kv_size, "backward V^T"));
  RINGATTN_ASSIGN_OR_RETURN(
      FloatBuffer scratch,
      FloatBuffer::Allocate(ctx.pool().num_threads() * BackwardScratchPerWorker(dp),
                            "backward scratch"));
  const BackwardWorkspace ws{q.data(), dout.data(), lse.data(), delta.data(),
                             k.data(), k_t.data(),  v_t.data(), scratch.data()};

  KernelsFor(ctx.isa()).backward(params, plan, ws, ctx.pool());
  return absl::OkStatus();
}

}  // namespace ringattn::kernels::cpu
