#include "kernels/cpu/impl/isa_dispatch.h"

namespace ringattn::kernels::cpu {

const IsaKernels& KernelsFor(Isa isa) {
  static constexpr IsaKernels kGenericKernels{&generic::Forward, &generic::Backward, false};
  static constexpr IsaKernels kAvx2Kernels{&avx2::Forward, &avx2::Backward, false};
  static constexpr IsaKernels kAvx512Kernels{&avx512::Forward, &avx512::Backward, false};
  static constexpr IsaKernels kAvx512Bf16Kernels{&avx512bf16::Forward, &avx512bf16::Backward, true};
  static constexpr IsaKernels kAmxKernels{&amx::Forward, &amx::Backward, true};
  switch (isa) {
    case Isa::kAmx:
      return kAmxKernels;
    case Isa::kAvx512Bf16:
      return kAvx512Bf16Kernels;
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
