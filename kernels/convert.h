#ifndef RINGATTN_KERNELS_CONVERT_H_
#define RINGATTN_KERNELS_CONVERT_H_

#include <cstdint>
#include <cstring>

#include "kernels/dtype.h"
#include "kernels/host_device.h"

namespace ringattn::kernels {

// The scalar conversions are shared with the CUDA kernels that write the
// ring's output on the device, so both backends round every value the same
// way, NaN payloads included.

RINGATTN_HOST_DEVICE uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

RINGATTN_HOST_DEVICE float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

RINGATTN_HOST_DEVICE float Bf16ToF32(uint16_t h) { return BitsFloat(uint32_t{h} << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
RINGATTN_HOST_DEVICE uint16_t F32ToBf16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE binary16 -> binary32, exact, subnormals included. Branch-free so
// loops over it vectorize.
RINGATTN_HOST_DEVICE float F16ToF32(uint16_t h) {
  const uint32_t w = uint32_t{h} << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal and inf/NaN: shift the exponent and mantissa into place, then
  // rescale the exponent bias by 2^-112.
  const float normalized = BitsFloat((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormal: place the mantissa in a float of exponent -1 and subtract it.
  const float denormalized = BitsFloat((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t bits =
      sign | (two_w < (1u << 27) ? FloatBits(denormalized) : FloatBits(normalized));
  return BitsFloat(bits);
}

// IEEE binary32 -> binary16, round to nearest even, overflow to inf.
RINGATTN_HOST_DEVICE uint16_t F32ToF16(float f) {
  // Scaling up then down makes the FPU round the mantissa at the half's
  // precision, including into the subnormal range.
#if defined(__CUDA_ARCH__)
  const float magnitude = fabsf(f);
#else
  const float magnitude = __builtin_fabsf(f);
#endif
  float base = (magnitude * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = FloatBits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = BitsFloat((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = FloatBits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// src: [n] elements of `dtype` -> dst: [n] fp32.
void ToF32(DType dtype, const void* src, int64_t n, float* dst);

// src: [n] fp32 -> dst: [n] elements of `dtype`, rounded to nearest even.
void FromF32(DType dtype, const float* src, int64_t n, void* dst);

// Rounds fp32 values in place to the nearest value representable in
// `dtype` (what a round trip through that format gives).
void RoundTo(DType dtype, float* values, int64_t n);

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_CONVERT_H_
