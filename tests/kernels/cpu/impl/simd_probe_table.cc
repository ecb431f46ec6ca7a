#include "tests/kernels/cpu/impl/simd_probe.h"

#define RINGATTN_DECLARE_PROBE(ns)                                               \
  namespace ringattn::kernels::cpu::ns {                                         \
  void ProbeExp(const float* x, int64_t n, float* y);                            \
  void ProbeExp2(const float* x, int64_t n, float* y);                           \
  void ProbeMask(float* s, bool transposed, TileClass cls, const MaskRule& rule, \
                 const probe::ProbeFrame& frame);                                \
  constexpr probe::SimdProbe kProbe{&ProbeExp, &ProbeExp2, &ProbeMask};          \
  }

RINGATTN_DECLARE_PROBE(generic)
RINGATTN_DECLARE_PROBE(avx2)
RINGATTN_DECLARE_PROBE(avx512)
RINGATTN_DECLARE_PROBE(avx512bf16)
RINGATTN_DECLARE_PROBE(amx)

#undef RINGATTN_DECLARE_PROBE

namespace ringattn::kernels::cpu::probe {

const SimdProbe& SimdProbeFor(Isa isa) {
  switch (isa) {
    case Isa::kAmx:
      return amx::kProbe;
    case Isa::kAvx512Bf16:
      return avx512bf16::kProbe;
    case Isa::kAvx512:
      return avx512::kProbe;
    case Isa::kAvx2:
      return avx2::kProbe;
    case Isa::kGeneric:
      break;
  }
  return generic::kProbe;
}

}  // namespace ringattn::kernels::cpu::probe
