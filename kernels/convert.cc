#include "kernels/convert.h"

namespace ringattn::kernels {

void ToF32(DType dtype, const void* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kBF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(h[i]);
      return;
    }
    case DType::kF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(h[i]);
      return;
    }
  }
}

void FromF32(DType dtype, const float* src, int64_t n, void* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kBF16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = F32ToBf16(src[i]);
      return;
    }
    case DType::kF16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = F32ToF16(src[i]);
      return;
    }
  }
}

void RoundTo(DType dtype, float* values, int64_t n) {
  switch (dtype) {
    case DType::kF32:
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) values[i] = Bf16ToF32(F32ToBf16(values[i]));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) values[i] = F16ToF32(F32ToF16(values[i]));
      return;
  }
}

}  // namespace ringattn::kernels
