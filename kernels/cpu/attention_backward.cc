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

  const IsaKernels& kernels = KernelsFor(ctx.isa());
  // bf16 on the matrix units keeps every operand in bf16 packs instead.
  const bool bf16 = kernels.bf16_matrix && p.shape.dtype == DType::kBF16;
  const int64_t q_size = bf16 ? 0 : q_rows * dp;
  const int64_t fp32_kv_size = bf16 ? 0 : kv_size;
  const int64_t bf16_elements =
      bf16 ? kBf16BackwardQPacks * q_rows * dp + kBf16BackwardKvPacks * kv_size : 0;

  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer q, FloatBuffer::Allocate(q_size, "backward Q"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer dout, FloatBuffer::Allocate(q_size, "backward dO"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer lse, FloatBuffer::Allocate(q_rows, "backward lse"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer delta, FloatBuffer::Allocate(q_rows, "backward delta"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer k, FloatBuffer::Allocate(fp32_kv_size, "backward K"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer k_t, FloatBuffer::Allocate(fp32_kv_size, "backward K^T"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer v_t, FloatBuffer::Allocate(fp32_kv_size, "backward V^T"));
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer bf16_buffer,
                            FloatBuffer::Allocate((bf16_elements + 1) / 2, "backward bf16 packs"));
  const bool one_pass = OnePassBackward(p.shape.batch * p.shape.kv_heads, ctx.pool().num_threads());
  RINGATTN_ASSIGN_OR_RETURN(FloatBuffer dq,
                            FloatBuffer::Allocate(one_pass ? q_rows * dp : 0, "backward dQ"));
  RINGATTN_ASSIGN_OR_RETURN(
      FloatBuffer scratch,
      FloatBuffer::Allocate(ctx.pool().num_threads() * BackwardScratchPerWorker(dp),
                            "backward scratch"));
  BackwardWorkspace ws;
  ws.q = q.data();
  ws.dout = dout.data();
  ws.lse = lse.data();
  ws.delta = delta.data();
  ws.k = k.data();
  ws.k_t = k_t.data();
  ws.v_t = v_t.data();
  ws.scratch = scratch.data();
  ws.dq = one_pass ? dq.data() : nullptr;
  if (bf16) {
    uint16_t* next = reinterpret_cast<uint16_t*>(bf16_buffer.data());
    auto take = [&next](int64_t size) {
      uint16_t* at = next;
      next += size;
      return at;
    };
    Bf16BackwardPacks& pk = ws.bf16;
    const int64_t qs = q_rows * dp;
    pk.q = take(qs);
    pk.q_dpairs = take(qs);
    pk.q_rpairs = take(qs);
    pk.dout = take(qs);
    pk.dout_dpairs = take(qs);
    pk.dout_rpairs = take(qs);
    pk.k = take(kv_size);
    pk.k_dpairs = take(kv_size);
    pk.k_rpairs = take(kv_size);
    pk.v = take(kv_size);
    pk.v_dpairs = take(kv_size);
  }

  kernels.backward(params, plan, ws, ctx.pool());
  return absl::OkStatus();
}

}  // namespace ringattn::kernels::cpu
