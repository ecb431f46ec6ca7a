#ifndef RINGATTN_KERNELS_REFERENCE_COMPARE_H_
#define RINGATTN_KERNELS_REFERENCE_COMPARE_H_

#include <cstdint>
#include <span>

#include "kernels/dtype.h"

namespace ringattn::kernels::reference {

// Error of a kernel result against the oracle, relative to the largest
// magnitude of the oracle (SPEC §6). Equal infinities count as exact, so
// -inf log-sum-exps of rows that attend nothing compare cleanly.
struct ErrorStats {
  double max_abs_err = 0.0;
  double max_ref = 0.0;
  int64_t mismatched_infinities = 0;  // -inf on one side only
  int64_t nans = 0;                   // NaN in the result (or the oracle)

  double relative() const { return max_abs_err / (max_ref > 0.0 ? max_ref : 1.0); }
  bool Within(double tolerance) const {
    return nans == 0 && mismatched_infinities == 0 && relative() <= tolerance;
  }
};

ErrorStats Compare(std::span<const float> got, std::span<const double> want);

// Stated tolerances, relative to the largest oracle magnitude. fp32: 1e-5.
// bf16/fp16 outputs are rounded to the format once: its unit roundoff (2^-8,
// 2^-11) on top of the fp32 tolerance. Gradients are fp32, but delta =
// rowsum(dO * O) reads the rounded O, and that rounding reaches dQ and dK
// through dS: 2x the unit roundoff (seen: about 0.6x).
double OutputTolerance(DType dtype);
double GradientTolerance(DType dtype);

}  // namespace ringattn::kernels::reference

#endif  // RINGATTN_KERNELS_REFERENCE_COMPARE_H_
