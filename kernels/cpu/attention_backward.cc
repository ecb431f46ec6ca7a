#include "kernels/cpu/attention_backward.h"

#include "kernels/cpu/impl/isa_dispatch.h"
#include "kernels/cpu/tile_plan.h"
#include "kernels/cpu/workspace_arena.h"
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

  const bool one_pass = OnePassBackward(p.shape.batch * p.shape.kv_heads, ctx.pool().num_threads());
  auto n = [](int64_t floats) { return static_cast<size_t>(floats); };
  RINGATTN_ASSIGN_OR_RETURN(
      const WorkspaceArena::Lease parts,
      ctx.workspace().Carve(
          {n(q_size), n(q_size), n(q_rows), n(q_rows), n(fp32_kv_size), n(fp32_kv_size),
           n(fp32_kv_size), n((bf16_elements + 1) / 2), n(one_pass ? q_rows * dp : 0),
           n(ctx.pool().num_threads() * BackwardScratchPerWorker(dp))},
          "backward workspace"));
  BackwardWorkspace ws;
  ws.q = parts[0];
  ws.dout = parts[1];
  ws.lse = parts[2];
  ws.delta = parts[3];
  ws.k = parts[4];
  ws.k_t = parts[5];
  ws.v_t = parts[6];
  ws.dq = one_pass ? parts[8] : nullptr;
  ws.scratch = parts[9];
  if (bf16) {
    auto* next = reinterpret_cast<uint16_t*>(parts[7]);
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
