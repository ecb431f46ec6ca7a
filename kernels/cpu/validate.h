#ifndef RINGATTN_KERNELS_CPU_VALIDATE_H_
#define RINGATTN_KERNELS_CPU_VALIDATE_H_

#include "absl/status/statusor.h"
#include "kernels/cpu/chunk_args.h"
#include "kernels/cpu/kernel_params.h"
#include "kernels/layer_config.h"

namespace ringattn::kernels::cpu {

// Largest supported head dim: Gemma 4's global layers use 512.
inline constexpr int64_t kMaxHeadDim = 512;

// Checks a layer config: dropout must be 0, a sliding window >= 1, the
// scale finite and positive.
absl::Status ValidateLayer(const LayerConfig& layer);

// Check every field once and return the plain kernel parameters. Errors are
// INVALID_ARGUMENT and name the offending field.
absl::StatusOr<ForwardParams> MakeForwardParams(const ForwardChunkArgs& args);
absl::StatusOr<BackwardParams> MakeBackwardParams(const BackwardChunkArgs& args);

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_VALIDATE_H_
