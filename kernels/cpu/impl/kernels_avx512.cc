// The CPU attention kernels built for the avx512 instruction set; the
// compile flags of this file select it (see kernels/CMakeLists.txt).
#define RINGATTN_ISA_NS avx512

#include "kernels/cpu/impl/flash_backward.h"
#include "kernels/cpu/impl/flash_forward.h"
#include "kernels/cpu/impl/isa_kernels.h"

namespace ringattn::kernels::cpu::avx512 {

void Forward(const ForwardParams& params, const TilePlan& plan, const ForwardWorkspace& ws,
             ThreadPool& pool) {
  ForwardImpl(params, plan, ws, pool);
}

void Backward(const BackwardParams& params, const TilePlan& plan, const BackwardWorkspace& ws,
              ThreadPool& pool) {
  BackwardImpl(params, plan, ws, pool);
}

}  // namespace ringattn::kernels::cpu::avx512
