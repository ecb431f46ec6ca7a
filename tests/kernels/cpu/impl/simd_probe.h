#ifndef RINGATTN_TESTS_KERNELS_CPU_IMPL_SIMD_PROBE_H_
#define RINGATTN_TESTS_KERNELS_CPU_IMPL_SIMD_PROBE_H_

// The SIMD helpers and the tile mask of one instruction set's build, behind
// plain functions: simd_probe.cc is compiled once per set (like the
// kernels), so a test built for the baseline can check every set the CPU
// runs.

#include <cstdint>

#include "kernels/block_classification.h"
#include "kernels/chunk_params.h"
#include "kernels/cpu/isa.h"
#include "kernels/mask.h"

namespace ringattn::kernels::cpu::probe {

// Where a tile sits (the kernels' TileFrame, which is per build).
struct ProbeFrame {
  MetaPtrs q_meta;
  MetaPtrs kv_meta;
  int64_t q_base = 0;  // Index of the tile's first query in q_meta.
  int64_t kv_base = 0;
  int64_t q_pos = 0;  // Global position of the tile's first query.
  int64_t kv_pos = 0;
  int64_t rows = 0;  // Real query rows, <= kBq.
  int64_t cols = 0;  // Real key columns, <= kBk.
};

struct SimdProbe {
  // y[i] = Exp(x[i]) or Exp2(x[i]); n a multiple of 16.
  void (*exp)(const float* x, int64_t n, float* y);
  void (*exp2)(const float* x, int64_t n, float* y);
  // MaskScores of s [kBq, kBk] (row = query), or with `transposed` the
  // backward's MaskScoresTransposed of s [kBk, kBq] (row = key).
  void (*mask)(float* s, bool transposed, TileClass cls, const MaskRule& rule,
               const ProbeFrame& frame);
};

// The probe built for `isa`; only call what IsaSupported(isa) allows.
const SimdProbe& SimdProbeFor(Isa isa);

}  // namespace ringattn::kernels::cpu::probe

#endif  // RINGATTN_TESTS_KERNELS_CPU_IMPL_SIMD_PROBE_H_
