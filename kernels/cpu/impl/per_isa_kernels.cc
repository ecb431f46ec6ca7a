// The CPU attention kernels for one instruction set. CMake compiles this
// file once per set, with that set's flags and RINGATTN_ISA_NS naming it.
#ifndef RINGATTN_ISA_NS
#error "compile with -DRINGATTN_ISA_NS=<generic|avx2|avx512>"
#endif

#include "kernels/cpu/impl/flash_backward.h"
#include "kernels/cpu/impl/flash_forward.h"
#include "kernels/cpu/impl/isa_dispatch.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

void Forward(const ForwardParams& params, const TilePlan& plan, const ForwardWorkspace& ws,
             ThreadPool& pool) {
  ForwardImpl(params, plan, ws, pool);
}

void Backward(const BackwardParams& params, const TilePlan& plan, const BackwardWorkspace& ws,
              ThreadPool& pool) {
  BackwardImpl(params, plan, ws, pool);
}

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS
