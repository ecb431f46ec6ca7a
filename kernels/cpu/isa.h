#ifndef RINGATTN_KERNELS_CPU_ISA_H_
#define RINGATTN_KERNELS_CPU_ISA_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"

namespace ringattn::kernels::cpu {

// Instruction sets the CPU kernels are compiled for; the best one the CPU
// supports is chosen at run time.
enum class Isa : uint8_t { kGeneric, kAvx2, kAvx512 };

absl::string_view IsaName(Isa isa);
std::optional<Isa> ParseIsa(absl::string_view name);

// Whether this CPU (and OS) can run code built for `isa`.
bool IsaSupported(Isa isa);

// The fastest supported instruction set.
Isa BestIsa();

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_ISA_H_
