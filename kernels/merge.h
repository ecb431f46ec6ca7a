#ifndef RINGATTN_KERNELS_MERGE_H_
#define RINGATTN_KERNELS_MERGE_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace ringattn::kernels {

// Merges one chunk's partial attention into a running result, in place and
// in fp32 (SPEC §3):
//   lse = logaddexp(lse_acc, lse_s)
//   out = out_acc * exp(lse_acc - lse) + o_s * exp(lse_s - lse)
// Rows with -inf on both sides stay exactly 0 / -inf, never NaN. Start the
// running result at out = 0, lse = -inf (or at the first chunk's partial).
//
// out, o_s: [rows, D]; lse, lse_s: [rows]. INVALID_ARGUMENT on size mismatch.
// The argument check of MergePartial (and of every space's Merge):
// INVALID_ARGUMENT unless out = o_s = rows * head_dim and lse = lse_s = rows
// elements.
absl::Status CheckMergeSizes(size_t out, size_t lse, size_t o_s, size_t lse_s, int64_t head_dim);

absl::Status MergePartial(std::span<float> out, std::span<float> lse, std::span<const float> o_s,
                          std::span<const float> lse_s, int64_t head_dim);

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_MERGE_H_
