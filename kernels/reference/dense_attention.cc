#include "kernels/reference/dense_attention.h"

#include <cmath>
#include <limits>

#include "kernels/mask.h"

namespace ringattn::kernels::reference {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Scaled scores of one query row against keys [k0, k1); -inf where masked.
std::vector<double> ScoreRow(const DenseProblem& p, int64_t b, int64_t h, int64_t qi, int64_t k0,
                             int64_t k1) {
  const int64_t S = p.seq_len;
  const int64_t D = p.head_dim;
  const int64_t kvh = h / (p.heads / p.kv_heads);
  const double* q = &p.q[((b * p.heads + h) * S + qi) * D];
  std::vector<double> s(k1 - k0, kNegInf);
  for (int64_t ki = k0; ki < k1; ++ki) {
    if (!DenseAllowed(p, b, qi, ki)) continue;
    const double* k = &p.k[((b * p.kv_heads + kvh) * S + ki) * D];
    double dot = 0.0;
    for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
    s[ki - k0] = dot * static_cast<double>(p.layer.scale);
  }
  return s;
}

}  // namespace

bool DenseAllowed(const DenseProblem& p, int64_t b, int64_t qi, int64_t ki) {
  const int64_t at_q = b * p.seq_len + qi;
  const int64_t at_k = b * p.seq_len + ki;
  return Allowed(MaskRuleFor(p.layer),
                 TokenInfo{qi, p.doc[at_q], p.vision[at_q], p.padding[at_q] != 0},
                 TokenInfo{ki, p.doc[at_k], p.vision[at_k], p.padding[at_k] != 0});
}

DenseOutput DenseForward(const DenseProblem& p, int64_t key_begin, int64_t key_end) {
  const int64_t S = p.seq_len;
  const int64_t D = p.head_dim;
  if (key_end < 0) key_end = S;
  DenseOutput r;
  r.out.assign(p.batch * p.heads * S * D, 0.0);
  r.lse.assign(p.batch * p.heads * S, kNegInf);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kvh = h / (p.heads / p.kv_heads);
      for (int64_t qi = 0; qi < S; ++qi) {
        const std::vector<double> s = ScoreRow(p, b, h, qi, key_begin, key_end);
        double m = kNegInf;
        for (double x : s) m = std::fmax(m, x);
        if (m == kNegInf) continue;
        double sum = 0.0;
        for (double x : s) sum += std::exp(x - m);
        const int64_t row = (b * p.heads + h) * S + qi;
        for (int64_t ki = key_begin; ki < key_end; ++ki) {
          const double w = std::exp(s[ki - key_begin] - m) / sum;
          if (w == 0.0) continue;
          const double* v = &p.v[((b * p.kv_heads + kvh) * S + ki) * D];
          for (int64_t d = 0; d < D; ++d) r.out[row * D + d] += w * v[d];
        }
        r.lse[row] = m + std::log(sum);
      }
    }
  }
  return r;
}

DenseGrads DenseBackward(const DenseProblem& p, std::span<const double> dout) {
  const int64_t S = p.seq_len;
  const int64_t D = p.head_dim;
  const DenseOutput fwd = DenseForward(p);
  DenseGrads g;
  g.dq.assign(p.q.size(), 0.0);
  g.dk.assign(p.k.size(), 0.0);
  g.dv.assign(p.v.size(), 0.0);
  const double scale = p.layer.scale;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kvh = h / (p.heads / p.kv_heads);
      for (int64_t qi = 0; qi < S; ++qi) {
        const int64_t row = (b * p.heads + h) * S + qi;
        if (fwd.lse[row] == kNegInf) continue;
        const std::vector<double> s = ScoreRow(p, b, h, qi, 0, S);
        const double* dO = &dout[row * D];
        const double* q = &p.q[row * D];
        // P_j = exp(s_j - lse); dP_j = dO · V_j; dS_j = P_j (dP_j - sum_j P_j dP_j).
        std::vector<double> prob(S, 0.0);
        std::vector<double> dp(S, 0.0);
        double delta = 0.0;
        for (int64_t ki = 0; ki < S; ++ki) {
          if (s[ki] == kNegInf) continue;
          prob[ki] = std::exp(s[ki] - fwd.lse[row]);
          const double* v = &p.v[((b * p.kv_heads + kvh) * S + ki) * D];
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += dO[d] * v[d];
          dp[ki] = dot;
          delta += prob[ki] * dot;
        }
        for (int64_t ki = 0; ki < S; ++ki) {
          if (prob[ki] == 0.0) continue;
          const int64_t kv_row = (b * p.kv_heads + kvh) * S + ki;
          const double ds = prob[ki] * (dp[ki] - delta);
          const double* k = &p.k[kv_row * D];
          for (int64_t d = 0; d < D; ++d) {
            g.dq[row * D + d] += scale * ds * k[d];
            g.dk[kv_row * D + d] += scale * ds * q[d];
            g.dv[kv_row * D + d] += prob[ki] * dO[d];
          }
        }
      }
    }
  }
  return g;
}

DenseGrads GradsAtGivenOutput(const DenseProblem& p, const DenseOutput& exact, DenseGrads grads,
                              std::span<const float> dout, std::span<const float> out) {
  const int64_t S = p.seq_len;
  const int64_t D = p.head_dim;
  const double scale = p.layer.scale;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t kvh = h / (p.heads / p.kv_heads);
      for (int64_t qi = 0; qi < S; ++qi) {
        const int64_t row = (b * p.heads + h) * S + qi;
        if (exact.lse[row] == kNegInf) continue;  // Attends nothing: no gradient.
        double d_delta = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          d_delta += dout[row * D + d] * (out[row * D + d] - exact.out[row * D + d]);
        }
        if (d_delta == 0.0) continue;
        const std::vector<double> s = ScoreRow(p, b, h, qi, 0, S);
        const double* q = &p.q[row * D];
        for (int64_t ki = 0; ki < S; ++ki) {
          if (s[ki] == kNegInf) continue;
          const int64_t kv_row = (b * p.kv_heads + kvh) * S + ki;
          const double* k = &p.k[kv_row * D];
          const double c = scale * std::exp(s[ki] - exact.lse[row]) * d_delta;
          for (int64_t d = 0; d < D; ++d) {
            grads.dq[row * D + d] -= c * k[d];
            grads.dk[kv_row * D + d] -= c * q[d];
          }
        }
      }
    }
  }
  return grads;
}

}  // namespace ringattn::kernels::reference
