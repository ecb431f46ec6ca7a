// Compiled once per instruction set, with RINGATTN_ISA_NS naming it (see
// simd_probe.h).
#ifndef RINGATTN_ISA_NS
#error "compile with -DRINGATTN_ISA_NS=<generic|avx2|avx512|avx512bf16|amx>"
#endif

#include "tests/kernels/cpu/impl/simd_probe.h"

#include "kernels/cpu/impl/flash_common.h"
#include "kernels/cpu/impl/simd.h"

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

void ProbeExp(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; i += kLanes) Store(y + i, Exp(Load(x + i)));
}

void ProbeExp2(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; i += kLanes) Store(y + i, Exp2(Load(x + i)));
}

void ProbeMask(float* s, bool transposed, TileClass cls, const MaskRule& rule,
               const probe::ProbeFrame& pf) {
  const TileFrame f{&pf.q_meta, &pf.kv_meta, pf.q_base, pf.kv_base,
                    pf.q_pos,   pf.kv_pos,   pf.rows,   pf.cols};
  if (transposed) {
    MaskScoresTransposed(s, cls, rule, f);
  } else {
    MaskScores(s, kBk, cls, rule, f);
  }
}

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS
