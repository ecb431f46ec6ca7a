#include "proto/wire/dtype.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::wire {

absl::StatusOr<kernels::DType> ParseDType(absl::string_view name) {
  // The inverse of the names kernels::DTypeName gives, so parse and format
  // cannot drift apart.
  for (const kernels::DType dtype :
       {kernels::DType::kF32, kernels::DType::kBF16, kernels::DType::kF16}) {
    if (name == kernels::DTypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype '", name, "' is not supported; use FP32, BF16 or FP16"));
}

std::string DTypeName(kernels::DType dtype) { return kernels::DTypeName(dtype); }

}  // namespace ringattn::wire
