#include "kernels/reference/compare.h"

#include <cmath>

namespace ringattn::kernels::reference {
namespace {

constexpr double kF32Tolerance = 1e-5;

double UnitRoundoff(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 0.0;
    case DType::kBF16:
      return std::ldexp(1.0, -8);
    case DType::kF16:
      return std::ldexp(1.0, -11);
  }
  return 0.0;
}

}  // namespace

ErrorStats Compare(std::span<const float> got, std::span<const double> want) {
  ErrorStats s;
  const size_t n = got.size() < want.size() ? got.size() : want.size();
  if (got.size() != want.size()) ++s.mismatched_infinities;
  for (size_t i = 0; i < n; ++i) {
    const double g = got[i];
    const double w = want[i];
    if (std::isnan(g) || std::isnan(w)) {  // Never a match, on either side.
      ++s.nans;
      continue;
    }
    if (std::isinf(g) || std::isinf(w)) {
      if (g != w) ++s.mismatched_infinities;
      continue;
    }
    s.max_abs_err = std::fmax(s.max_abs_err, std::fabs(g - w));
    s.max_ref = std::fmax(s.max_ref, std::fabs(w));
  }
  return s;
}

double OutputTolerance(DType dtype) { return UnitRoundoff(dtype) + kF32Tolerance; }

double GradientTolerance(DType dtype) { return 2.0 * UnitRoundoff(dtype) + kF32Tolerance; }

}  // namespace ringattn::kernels::reference
