#include "kernels/cpu/impl/isa_dispatch.h"

namespace ringattn::kernels::cpu {

const IsaKernels& KernelsFor(Isa isa) {
  static constexpr IsaKernels kGenericKernels{&generic::Forward, &generic::Backward};
  static constexpr IsaKernels kAvx2Kernels{&avx2::Forward, &avx2::Backward};
  static constexpr IsaKernels kAvx512Kernels{&avx512::Forward, &avx512::Backward};
  switch (isa) {
    case Isa::kAvx512:
      return kAvx512Kernels;
    case Isa::kAvx2:
      return kAvx2Kernels;
    case Isa::kGeneric:
      break;
  }
  return kGenericKernels;
}

}  // namespace ringattn::kernels::cpu
