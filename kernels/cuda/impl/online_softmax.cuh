#ifndef RINGATTN_KERNELS_CUDA_IMPL_ONLINE_SOFTMAX_CUH_
#define RINGATTN_KERNELS_CUDA_IMPL_ONLINE_SOFTMAX_CUH_

// The forward's softmax over one key tile at a time: mask and scale the
// scores, update each row's running max and sum, turn the scores into
// unnormalized probabilities, and rescale the running output to the new max,
// so the whole key sequence is never held at once. The exponent and the
// per-pair mask test live here too because the backward recomputes P with
// them and must get the forward's probabilities.

#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/block_classification.h"
#include "kernels/cuda/impl/device_utils.cuh"
#include "kernels/cuda/impl/tile_io.cuh"
#include "kernels/cuda/tile_config.h"
#include "kernels/mask.h"

namespace ringattn::kernels::cuda::impl {

// fp32 inputs promise 1e-5 relative, so they get the accurate expf; the
// tensor-core path rounds P to 16 bits anyway and takes the fast one.
template <typename T>
__device__ __forceinline__ float Exp(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(x);
  } else {
    return __expf(x);
  }
}

// Classify found every real pair of a full tile allowed, so there only the
// padding slots of a short last key tile (j >= cols) are excluded.
__device__ __forceinline__ bool PairAllowed(TileClass cls, const MaskRule& rule, const TokenInfo& q,
                                            const TokenInfo& k, int j, int cols) {
  return cls == TileClass::kFull ? j < cols : Allowed(rule, q, k);
}

// One key tile of online softmax, one warp per query row (the row max and
// sum are warp reductions). s: [kBq, LdScore] raw q·k in, masked scaled
// scores out; p: [kBq, LdProb] unnormalized probabilities exp(s - m_new);
// o: [kBq, LdAcc] running output, rescaled by exp(m_old - m_new), or, when o
// is null (the caller keeps the output in fragments), that factor written to
// alpha_out: [kBq] for the caller to apply; m, l: [kBq] running max and sum
// (l from the fp32 probabilities, before they are rounded to T); q_tok:
// [kBq], k_tok: [kBk]. All in shared memory.
template <typename T, int kBq, int kBk, int kBucket>
__device__ __forceinline__ void OnlineSoftmax(float* s, T* p, float* o, float* alpha_out, float* m,
                                              float* l, const TokenInfo* q_tok,
                                              const TokenInfo* k_tok, int rows, int cols,
                                              TileClass cls, const MaskRule& rule, float scale,
                                              int dp) {
  constexpr int kLds = LdScore(kBk);
  constexpr int kLdp = LdProb(kBk);
  constexpr int kLdo = LdAcc(kBucket);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  for (int r = warp; r < kBq; r += kWarps) {
    T* p_row = p + r * kLdp;
    if (r >= rows) {
      for (int j = lane; j < kBk; j += 32) p_row[j] = FromF32<T>(0.0f);
      if (o == nullptr && lane == 0) alpha_out[r] = 1.0f;
      continue;
    }
    float* s_row = s + r * kLds;
    const TokenInfo q = q_tok[r];
    float tile_max = NegInf();
    for (int j = lane; j < kBk; j += 32) {
      const float x = PairAllowed(cls, rule, q, k_tok[j], j, cols) ? s_row[j] * scale : NegInf();
      s_row[j] = x;
      tile_max = fmaxf(tile_max, x);
    }
    tile_max = WarpMax(tile_max);
    const float m_old = m[r];
    const float m_new = fmaxf(m_old, tile_max);
    if (m_new == NegInf()) {  // Nothing attended yet: the row stays at zero.
      for (int j = lane; j < kBk; j += 32) p_row[j] = FromF32<T>(0.0f);
      if (o == nullptr && lane == 0) alpha_out[r] = 1.0f;
      continue;
    }
    const float alpha = m_old == NegInf() ? 0.0f : Exp<T>(m_old - m_new);
    float sum = 0.0f;
    for (int j = lane; j < kBk; j += 32) {
      const float e = Exp<T>(s_row[j] - m_new);  // exp(-inf) = 0 for masked pairs
      sum += e;
      p_row[j] = FromF32<T>(e);
    }
    sum = WarpSum(sum);
    if (o == nullptr) {
      if (lane == 0) alpha_out[r] = alpha;
    } else if (alpha != 1.0f) {
      float* o_row = o + r * kLdo;
      for (int c = lane; c < dp; c += 32) o_row[c] *= alpha;
    }
    __syncwarp();  // Every lane has read m[r] before lane 0 replaces it.
    if (lane == 0) {
      m[r] = m_new;
      l[r] = l[r] * alpha + sum;
    }
  }
}

}  // namespace ringattn::kernels::cuda::impl

#endif  // RINGATTN_KERNELS_CUDA_IMPL_ONLINE_SOFTMAX_CUH_
