#ifndef RINGATTN_KERNELS_REFERENCE_DENSE_ATTENTION_H_
#define RINGATTN_KERNELS_REFERENCE_DENSE_ATTENTION_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/layer_config.h"

// The correctness oracle of SPEC §6: dense attention on the whole padded
// sequence in fp64 with the explicit mask of SPEC §2, and its analytic
// backward. Slow on purpose (O(B·H·S²·D), no tiling, no skipping): its only
// job is to be obviously right.
//
// Glossary: B batch, H query heads, Hkv kv heads, S padded sequence length,
// D head dim. Positions are 0..S-1.

namespace ringattn::kernels::reference {

struct DenseProblem {
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t seq_len = 0;
  int64_t head_dim = 0;
  std::vector<double> q;         // [B, H, S, D]
  std::vector<double> k;         // [B, Hkv, S, D]
  std::vector<double> v;         // [B, Hkv, S, D]
  std::vector<int32_t> doc;      // [B, S]
  std::vector<int32_t> vision;   // [B, S]
  std::vector<uint8_t> padding;  // [B, S]
  LayerConfig layer;
};

struct DenseOutput {
  std::vector<double> out;  // [B, H, S, D]; 0 for rows that attend nothing
  std::vector<double> lse;  // [B, H, S]; -inf for rows that attend nothing
};

struct DenseGrads {
  std::vector<double> dq;  // [B, H, S, D]
  std::vector<double> dk;  // [B, Hkv, S, D]
  std::vector<double> dv;  // [B, Hkv, S, D]
};

// Keys are restricted to [key_begin, key_end) (the whole sequence by
// default), which gives the partial result of one chunk.
DenseOutput DenseForward(const DenseProblem& p, int64_t key_begin = 0, int64_t key_end = -1);

// dout: [B, H, S, D].
DenseGrads DenseBackward(const DenseProblem& p, std::span<const double> dout);

// The gradients of a backward handed `out` ([B, H, S, D], e.g. the forward
// output rounded to the input dtype, as kernels are) instead of the exact O:
// its delta_i = dO_i . O_i moves, so dS_ij = P_ij (dP_ij - delta_i) moves by
// -P_ij * d_delta_i, which reaches dQ_i (through K_j) and dK_j (through
// Q_i); dV never reads delta. `exact` and `grads`: DenseForward and
// DenseBackward of `p`; dout: [B, H, S, D].
DenseGrads GradsAtGivenOutput(const DenseProblem& p, const DenseOutput& exact, DenseGrads grads,
                              std::span<const float> dout, std::span<const float> out);

// Whether query position qi may attend key position ki in batch row b.
bool DenseAllowed(const DenseProblem& p, int64_t b, int64_t qi, int64_t ki);

}  // namespace ringattn::kernels::reference

#endif  // RINGATTN_KERNELS_REFERENCE_DENSE_ATTENTION_H_
