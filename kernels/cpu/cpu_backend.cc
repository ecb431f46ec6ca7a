#include "kernels/cpu/cpu_backend.h"

#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/backends.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels {

absl::StatusOr<std::unique_ptr<ChunkBackend>> MakeCpuBackend(int num_threads,
                                                             const std::string& isa) {
  cpu::CpuContext::Options context_options;
  context_options.num_threads = num_threads;
  if (!isa.empty()) {
    context_options.isa = cpu::ParseIsa(isa);
    if (!context_options.isa.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown instruction set '", isa,
                       "' (expected generic, avx2, avx512, avx512bf16 or amx)"));
    }
  }
  RINGATTN_ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuContext> ctx,
                            cpu::CpuContext::Create(context_options));
  return std::make_unique<cpu::CpuBackend>(std::move(ctx));
}

std::vector<std::string> SupportedCpuIsas() {
  std::vector<std::string> names;
  for (cpu::Isa isa : cpu::kAllIsas) {
    if (cpu::IsaSupported(isa)) names.emplace_back(cpu::IsaName(isa));
  }
  return names;
}

}  // namespace ringattn::kernels
