#ifndef RINGATTN_KERNELS_CPU_ISA_H_
#define RINGATTN_KERNELS_CPU_ISA_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"

namespace ringattn::kernels::cpu {

// Instruction sets the CPU kernels are compiled for; the best one the CPU
// supports is chosen at run time. kAvx512Bf16 adds the bf16 dot products
// (vdpbf16ps) and kAmx the AMX tiles, both used for bf16 inputs; fp32 and
// fp16 inputs run the AVX-512 code on them.
enum class Isa : uint8_t { kGeneric, kAvx2, kAvx512, kAvx512Bf16, kAmx };

// Every instruction set, slowest first.
inline constexpr Isa kAllIsas[] = {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16,
                                   Isa::kAmx};

absl::string_view IsaName(Isa isa);
std::optional<Isa> ParseIsa(absl::string_view name);

// Whether this CPU (and OS) can run code built for `isa`. For kAmx this asks
// the kernel once per process for permission to use the tile data state
// (Linux's ARCH_REQ_XCOMP_PERM); a refusal means "not supported".
bool IsaSupported(Isa isa);

// The fastest supported instruction set.
Isa BestIsa();

}  // namespace ringattn::kernels::cpu

#endif  // RINGATTN_KERNELS_CPU_ISA_H_
