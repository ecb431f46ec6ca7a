#include "kernels/merge.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace ringattn::kernels {

absl::Status CheckMergeSizes(size_t out, size_t lse, size_t o_s, size_t lse_s, int64_t head_dim) {
  if (head_dim <= 0 || lse != lse_s || out != lse * static_cast<size_t>(head_dim) || o_s != out) {
    return absl::InvalidArgumentError(absl::StrCat(
        "merge: out has ", out, " elements, lse ", lse, ", o_s ", o_s, ", lse_s ", lse_s,
        ", head_dim ", head_dim, "; need out = o_s = rows * head_dim and lse = lse_s = rows"));
  }
  return absl::OkStatus();
}

absl::Status MergePartial(std::span<float> out, std::span<float> lse, std::span<const float> o_s,
                          std::span<const float> lse_s, int64_t head_dim) {
  if (absl::Status s = CheckMergeSizes(out.size(), lse.size(), o_s.size(), lse_s.size(), head_dim);
      !s.ok()) {
    return s;
  }
  const auto d = static_cast<size_t>(head_dim);
  for (size_t r = 0; r < lse.size(); ++r) {
    const float a = lse[r];
    const float b = lse_s[r];
    if (b == -INFINITY) continue;  // The chunk adds nothing to this row.
    float* acc = out.data() + r * d;
    const float* part = o_s.data() + r * d;
    if (a == -INFINITY) {
      for (size_t c = 0; c < d; ++c) acc[c] = part[c];
      lse[r] = b;
      continue;
    }
    const float hi = std::fmax(a, b);
    const float merged = hi + std::log1p(std::exp(-std::fabs(a - b)));
    const float wa = std::exp(a - merged);
    const float wb = std::exp(b - merged);
    for (size_t c = 0; c < d; ++c) acc[c] = acc[c] * wa + part[c] * wb;
    lse[r] = merged;
  }
  return absl::OkStatus();
}

}  // namespace ringattn::kernels
