#ifndef RINGATTN_PROTO_WIRE_DTYPE_H_
#define RINGATTN_PROTO_WIRE_DTYPE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"

// The element type of Q, K, V, O and dO on the wire, by its KServe/Triton
// name (FP32, BF16, FP16): the one parse of that string, and its format, for
// the client and both daemons alike.

namespace ringattn::wire {

// INVALID_ARGUMENT naming the string for anything but the three names
// (exact, case included).
absl::StatusOr<kernels::DType> ParseDType(absl::string_view name);

std::string DTypeName(kernels::DType dtype);

}  // namespace ringattn::wire

#endif  // RINGATTN_PROTO_WIRE_DTYPE_H_
