#ifndef RINGATTN_KERNELS_VALIDATE_H_
#define RINGATTN_KERNELS_VALIDATE_H_

#include "absl/status/statusor.h"
#include "kernels/chunk_args.h"
#include "kernels/chunk_params.h"
#include "kernels/layer_config.h"

namespace ringattn::kernels {

// Largest supported head dim: Gemma 4's global layers use 512.
inline constexpr int64_t kMaxHeadDim = 512;

// Checks a layer config: dropout must be 0, a sliding window >= 1, the
// scale finite and positive.
absl::Status ValidateLayer(const LayerConfig& layer);

// Check every field once and return the plain kernel parameters. Errors are
// INVALID_ARGUMENT and name the offending field.
absl::StatusOr<ForwardParams> MakeForwardParams(const ForwardChunkArgs& args);
absl::StatusOr<BackwardParams> MakeBackwardParams(const BackwardChunkArgs& args);

}  // namespace ringattn::kernels

#endif  // RINGATTN_KERNELS_VALIDATE_H_
