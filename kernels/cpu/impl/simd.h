#ifndef RINGATTN_KERNELS_CPU_IMPL_SIMD_H_
#define RINGATTN_KERNELS_CPU_IMPL_SIMD_H_

// Portable SIMD on GCC vector extensions. This header is compiled once per
// instruction set, each time inside its own namespace (RINGATTN_ISA_NS), so
// no symbol built for one set can stand in for another's at link time. Code
// here uses no inline library templates for the same reason.

#include <immintrin.h>

#include <cstdint>

#ifndef RINGATTN_ISA_NS
#error "define RINGATTN_ISA_NS before including kernels/cpu/impl headers"
#endif

namespace ringattn::kernels::cpu::RINGATTN_ISA_NS {

// kLanes: fp32 lanes per register. kMr x kNr: the register tile of the GEMM
// micro-kernel (kMr rows of A broadcast against kNr columns of B), sized so
// the accumulators, B panel and broadcast fit the register file.
#if defined(__AVX512F__)
inline constexpr int kLanes = 16;
inline constexpr int kMr = 8;
inline constexpr int kNr = 32;
#elif defined(__AVX2__)
inline constexpr int kLanes = 8;
inline constexpr int kMr = 4;
inline constexpr int kNr = 16;
#else
inline constexpr int kLanes = 4;
inline constexpr int kMr = 4;
inline constexpr int kNr = 8;
#endif

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline constexpr float kInf = __builtin_huge_valf();
inline constexpr float kLog2E = 1.44269504088896341f;  // log2(e)
inline constexpr float kLn2 = 0.693147180559945309f;   // ln(2)

inline VecF Load(const float* p) {
  VecF v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float* p, VecF v) { __builtin_memcpy(p, &v, sizeof(v)); }

// The set1 intrinsic rather than `VecF{} + x`: that form adds +0.0, which
// the compiler must keep (it turns -0.0 into +0.0), so every broadcast in the
// GEMM loops cost an add and a shuffle instead of one broadcast load.
inline VecF Splat(float x) {
#if defined(__AVX512F__)
  return _mm512_set1_ps(x);
#elif defined(__AVX2__)
  return _mm256_set1_ps(x);
#else
  return _mm_set1_ps(x);
#endif
}

inline VecF Max(VecF a, VecF b) { return a > b ? a : b; }

// Horizontal max and sum: a halving shuffle tree on AVX-512 (these run once
// per score row, where a 16-step scalar chain cost as much as the row's exp).
// Not _mm512_reduce_*: GCC 12's headers trip -Wmaybe-uninitialized there.
#if defined(__AVX512F__)
typedef float Vec8F __attribute__((vector_size(8 * sizeof(float))));
typedef float Vec4F __attribute__((vector_size(4 * sizeof(float))));

template <typename Op>
inline float ReduceTree(VecF v, Op op) {
  const Vec8F a = op(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
                     __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  const Vec4F b =
      op(__builtin_shufflevector(a, a, 0, 1, 2, 3), __builtin_shufflevector(a, a, 4, 5, 6, 7));
  const Vec4F c = op(b, __builtin_shufflevector(b, b, 2, 3, 0, 1));
  return op(c, __builtin_shufflevector(c, c, 1, 0, 3, 2))[0];
}
#endif

inline float ReduceMax(VecF v) {
#if defined(__AVX512F__)
  return ReduceTree(v, [](auto x, auto y) { return x > y ? x : y; });
#else
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
#endif
}

inline float ReduceSum(VecF v) {
#if defined(__AVX512F__)
  return ReduceTree(v, [](auto x, auto y) { return x + y; });
#else
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
#endif
}

// c[0] r^(N-1) + ... + c[N-1] by Horner's rule; the kernels' fp
// contraction makes each step one fused multiply-add.
template <int N>
inline VecF Horner(VecF r, const float (&c)[N]) {
  VecF p = Splat(c[0]);
#pragma GCC unroll 8
  for (int i = 1; i < N; ++i) p = p * r + c[i];
  return p;
}

// Cephes' expf and exp2f polynomials (see Exp and Exp2).
inline constexpr float kExpPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                     4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
inline constexpr float kExp2Poly[] = {1.535336188319500e-4f,
                                      1.339887440266574e-3f,
                                      9.618437357674640e-3f,
                                      5.550332471162809e-2f,
                                      2.402264791363012e-1f,
                                      6.931472028550421e-1f,
                                      1.0f};

// exp(x) with a relative error of about 1 ulp on [-87.3, 88.4]; exactly 0
// below (so masked scores of -inf give exact zeros). Cephes' expf: round
// x/ln2 to n, reduce with a two-part ln2, a degree-6 polynomial, scale by 2^n.
#if defined(__AVX512F__)
// The same polynomial with AVX-512's rounding and scaling instructions
// (vrndscaleps, vscalefps) and a mask for the zeros: about 15 operations a
// vector instead of 22. NaN stays NaN (vminps returns its second operand
// when either is NaN, so x goes second). The maskz forms of min and
// roundscale: the plain ones start from an undefined register, which GCC
// 12 reports as maybe-uninitialized.
inline VecF Exp(VecF x) {
  const __m512 v = x;
  const __mmask16 live = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-87.33654f), _CMP_NLT_UQ);
  const __m512 xc = _mm512_maskz_min_ps(0xFFFF, _mm512_set1_ps(88.37626f), v);
  const __m512 n = _mm512_maskz_roundscale_ps(0xFFFF, _mm512_mul_ps(xc, _mm512_set1_ps(kLog2E)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  const VecF rv = r;
  const __m512 y = Horner(rv, kExpPoly) * (rv * rv) + rv + 1.0f;
  return _mm512_maskz_scalef_ps(live, y, n);
}

// 2^x with a relative error of about 2 ulp on [-126, 127]; exactly 0 below
// -126. Cephes' exp2f: x = n + r with r in [-1/2, 1/2] (exact), a degree-6
// polynomial for 2^r, scale by 2^n. Cheaper than Exp by the reduction (one
// subtraction, no two-part ln2) where the caller folds log2(e) into a
// multiply it does anyway. NaN stays NaN.
inline VecF Exp2(VecF x) {
  const __m512 v = x;
  const __mmask16 live = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
  const __m512 xc = _mm512_maskz_min_ps(0xFFFF, _mm512_set1_ps(127.0f), v);
  const __m512 n =
      _mm512_maskz_roundscale_ps(0xFFFF, xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 y = Horner(VecF(_mm512_sub_ps(xc, n)), kExp2Poly);
  return _mm512_maskz_scalef_ps(live, y, n);
}
#else
inline VecF Exp2(VecF x) {
  const VecF lo = Splat(-126.0f);
  VecF xc = x < lo ? lo : x;
  xc = xc > 127.0f ? Splat(127.0f) : xc;
  const VecF magic = Splat(12582912.0f);  // 1.5 * 2^23: rounds to integer.
  const VecF n = (xc + magic) - magic;
  const VecF y = Horner(xc - n, kExp2Poly);
  const VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  const VecF result = y * __builtin_bit_cast(VecF, bits);
  return x < lo ? Splat(0.0f) : result;
}

inline VecF Exp(VecF x) {
  const VecF lo = Splat(-87.33654f);
  const VecF hi = Splat(88.37626f);
  VecF xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const VecF magic = Splat(12582912.0f);  // 1.5 * 2^23: rounds to integer.
  const VecF n = (xc * kLog2E + magic) - magic;
  VecF r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const VecF y = Horner(r, kExpPoly) * (r * r) + r + 1.0f;
  const VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  const VecF result = y * __builtin_bit_cast(VecF, bits);
  return x < lo ? Splat(0.0f) : result;
}
#endif

}  // namespace ringattn::kernels::cpu::RINGATTN_ISA_NS

#endif  // RINGATTN_KERNELS_CPU_IMPL_SIMD_H_
