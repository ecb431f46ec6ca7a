#include "kernels/cpu/attention_forward.h"

#include "kernels/cpu/impl/isa_dispatch.h"
#include "kernels/cpu/tile_plan.h"
#include "kernels/cpu/workspace_arena.h"
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

  const IsaKernels& kernels = KernelsFor(ctx.isa());
  // bf16 on the matrix units keeps K and V in bf16 (half the floats each).
  const bool bf16 = kernels.bf16_matrix && p.shape.dtype == DType::kBF16;
  const int64_t fp32_size = bf16 ? 0 : kv_size;

  RINGATTN_ASSIGN_OR_RETURN(
      const WorkspaceArena::Lease parts,
      ctx.workspace().Carve(
          {static_cast<size_t>(fp32_size), static_cast<size_t>(fp32_size),
           static_cast<size_t>(bf16 ? kv_size : 0),
           static_cast<size_t>(ctx.pool().num_threads() * ForwardScratchPerWorker(dp))},
          "forward workspace"));
  auto* packs = reinterpret_cast<uint16_t*>(parts[2]);
  ForwardWorkspace ws;
  ws.k_t = parts[0];
  ws.v = parts[1];
  ws.k_dpairs = bf16 ? packs : nullptr;
  ws.v_rpairs = bf16 ? packs + kv_size : nullptr;
  ws.scratch = parts[3];

  kernels.forward(params, plan, ws, ctx.pool());
  return absl::OkStatus();
}

}  // namespace ringattn::kernels::cpu
