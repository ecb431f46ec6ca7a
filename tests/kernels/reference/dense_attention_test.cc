#include "kernels/reference/dense_attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ringattn::kernels::reference {
namespace {

// A small problem with every mask feature: two documents, an image block,
// padding, GQA 2:1, a sliding window.
DenseProblem SmallProblem(LayerKind kind) {
  DenseProblem p;
  p.batch = 1;
  p.heads = 2;
  p.kv_heads = 1;
  p.seq_len = 12;
  p.head_dim = 3;
  p.layer.kind = kind;
  p.layer.window = 3;
  p.layer.scale = 0.7f;
  p.doc = {1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0};
  p.vision = {-1, 0, 0, 0, 0, -1, -1, 1, 1, -1, -1, -1};
  p.padding = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (auto* t : {&p.q, &p.k, &p.v}) {
    const int64_t heads = t == &p.q ? p.heads : p.kv_heads;
    t->resize(heads * p.seq_len * p.head_dim);
    for (double& x : *t) x = dist(rng);
  }
  return p;
}

double Loss(const DenseProblem& p, const std::vector<double>& w) {
  const DenseOutput out = DenseForward(p);
  double loss = 0.0;
  for (size_t i = 0; i < w.size(); ++i) loss += out.out[i] * w[i];
  return loss;
}

// The oracle's analytic backward against central finite differences of
// loss = sum(O * W), so dO = W.
void CheckFiniteDifferences(LayerKind kind) {
  DenseProblem p = SmallProblem(kind);
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> w(p.q.size());
  for (double& x : w) x = dist(rng);
  const DenseGrads g = DenseBackward(p, w);
  const double eps = 1e-6;
  double max_grad = 0.0, max_err = 0.0;
  for (auto [tensor, grad] : {std::pair{&p.q, &g.dq}, {&p.k, &g.dk}, {&p.v, &g.dv}}) {
    for (size_t i = 0; i < tensor->size(); ++i) {
      const double saved = (*tensor)[i];
      (*tensor)[i] = saved + eps;
      const double up = Loss(p, w);
      (*tensor)[i] = saved - eps;
      const double down = Loss(p, w);
      (*tensor)[i] = saved;
      const double numeric = (up - down) / (2 * eps);
      max_grad = std::fmax(max_grad, std::fabs((*grad)[i]));
      max_err = std::fmax(max_err, std::fabs(numeric - (*grad)[i]));
    }
  }
  EXPECT_GT(max_grad, 0.1);
  EXPECT_LT(max_err / max_grad, 1e-7);
}

TEST(DenseAttentionTest, BackwardMatchesFiniteDifferencesFullLayer) {
  CheckFiniteDifferences(LayerKind::kFull);
}

TEST(DenseAttentionTest, BackwardMatchesFiniteDifferencesSlidingLayer) {
  CheckFiniteDifferences(LayerKind::kSliding);
}

TEST(DenseAttentionTest, ForwardMatchesHandComputedCase) {
  DenseProblem p;
  p.batch = p.heads = p.kv_heads = 1;
  p.seq_len = 3;
  p.head_dim = 1;
  p.q = {1.0, 2.0, 0.5};
  p.k = {1.0, -1.0, 3.0};
  p.v = {10.0, 20.0, 30.0};
  p.doc = {1, 1, 1};
  p.vision = {-1, -1, -1};
  p.padding = {0, 0, 1};
  const DenseOutput out = DenseForward(p);
  // Row 0 sees key 0 only.
  EXPECT_DOUBLE_EQ(out.out[0], 10.0);
  EXPECT_DOUBLE_EQ(out.lse[0], 1.0);
  // Row 1: scores 2 and -2 over keys 0 and 1.
  const double w0 = std::exp(2.0) / (std::exp(2.0) + std::exp(-2.0));
  EXPECT_NEAR(out.out[1], w0 * 10.0 + (1 - w0) * 20.0, 1e-12);
  EXPECT_NEAR(out.lse[1], std::log(std::exp(2.0) + std::exp(-2.0)), 1e-12);
  // Row 2 is padding.
  EXPECT_EQ(out.out[2], 0.0);
  EXPECT_EQ(out.lse[2], -INFINITY);
}

TEST(DenseAttentionTest, PaddingRowsHaveNoGradient) {
  DenseProblem p = SmallProblem(LayerKind::kFull);
  std::vector<double> w(p.q.size(), 1.0);
  const DenseGrads g = DenseBackward(p, w);
  for (int64_t h = 0; h < p.heads; ++h) {
    for (int64_t i = 10; i < 12; ++i) {
      for (int64_t d = 0; d < p.head_dim; ++d) {
        EXPECT_EQ(g.dq[(h * p.seq_len + i) * p.head_dim + d], 0.0);
      }
    }
  }
}

}  // namespace
}  // namespace ringattn::kernels::reference
