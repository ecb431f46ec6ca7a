#ifndef RINGATTN_KERNELS_DTYPE_H_
#define RINGATTN_KERNELS_DTYPE_H_

#include <cstddef>
#include <cstdint>

namespace ringattn::kernels {

// Element type of Q, K, V, O and dO. Whatever the input type, kernels
// accumulate in fp32.
enum class DType : uint8_t { kF32, kBF16, kF16 };

constexpr size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// Names follow the KServe/Triton wire convention.
constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "FP32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "FP16";
  }
  return "UNKNOWN";
}

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_DTYPE_H_
