#include "kernels/cpu/cpu_context.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::kernels::cpu {

absl::StatusOr<std::unique_ptr<CpuContext>> CpuContext::Create(const Options& options) {
  const Isa isa = options.isa.value_or(BestIsa());
  if (!IsaSupported(isa)) {
    return absl::FailedPreconditionError(
        absl::StrCat("instruction set '", IsaName(isa), "' is not supported by this CPU"));
  }
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be >= 0 (0 = one per core), got ", options.num_threads));
  }
  return std::unique_ptr<CpuContext>(new CpuContext(options.num_threads, isa));
}

}  // namespace ringattn::kernels::cpu
