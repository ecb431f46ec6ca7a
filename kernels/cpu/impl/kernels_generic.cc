// The CPU attention kernels built for the generic instruction set; the
// compile flags of this file select it (see kernels/CMakeLists.txt).
#define RINGATTN_ISA_NS generic

#include "kernels/cpu/impl/flash_backward.h"
#include "kernels/cpu/impl/flash_forward.h"
#include "kernels/cpu/impl/isa_kernels.h"

namespace ringattn::kernels::cpu::generic {

void Forward(const ForwardParams& params, const TilePlan& plan, const ForwardWorkspace& ws,
             ThreadPool& pool) {
  ForwardImpl(params, plan, ws, pool);
}

void Backward(const BackwardParams& params, const TilePlan& plan, const BackwardWorkspace& ws,
              ThreadPool& pool) {
  BackwardImpl(params, plan, ws, pool);
}

}  // namespace ringattn::kernels::cpu::generic
